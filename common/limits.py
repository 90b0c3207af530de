"""The request limits, read from the same variables by the gateway and the model server, so a
peer that bypasses the gateway gets no more than an HTTP client."""

from __future__ import annotations

import dataclasses
import functools

from common.env import setting
from common.webhook_hosts import HostPolicy
from protocol.contract import Limits
from protocol.messages import (MAX_IMAGES, MAX_PROMPT_LENGTH, MAX_SIZE, MAX_STEPS, MAX_UPLOAD_BYTES, MAX_UPSCALED_SIZE,
                               MIN_SIZE)


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """The request limits both processes read; ``limits`` gives them as the contract takes them."""

    max_prompt_length: int = setting("MAX_PROMPT_LENGTH", f"Characters, for `prompt` and `negative_prompt` (at most "
                                     f"{MAX_PROMPT_LENGTH}, the protocol's bound)", 200)
    max_steps: int = setting("MAX_STEPS", f"Denoising steps per image (at most {MAX_STEPS})", 100)
    max_width: int = setting("MAX_WIDTH", f"Image width in pixels (at most {MAX_SIZE})", Limits.max_width)
    max_height: int = setting("MAX_HEIGHT", f"Image height in pixels (at most {MAX_SIZE})", Limits.max_height)
    max_images: int = setting("MAX_IMAGES_PER_REQUEST", f"Images per request (at most {MAX_IMAGES})", 4)
    default_steps: int = setting("DEFAULT_STEPS", "The `quality` preset's steps", 25)
    default_size: int = setting("DEFAULT_SIZE", "Width and height of requests that give none, for models trained at "
                                "512 (SD 1.x/2.x, the one-step models); an SDXL model's default is its own 1024", 512)
    default_preset: str = setting("DEFAULT_PRESET", "The preset of requests that name none: `quality`, `balanced` "
                                  "or `fast`", "quality",
                                  read=lambda env, name: env.get(name, "").strip().lower() or None)
    max_upload_bytes: int = setting("MAX_UPLOAD_BYTES", f"An init image's encoded size (at most {MAX_UPLOAD_BYTES // 2**20} "
                                    "MiB); requests that carry one may be this much larger than MAX_BODY_BYTES",
                                    8 * 2**20)
    max_upscale_size: int = setting("MAX_UPSCALE_SIZE", "The longest side of an upscale job's result in pixels (at "
                                    f"most {MAX_UPSCALED_SIZE}); upscaling runs in tiles, so memory does not grow with "
                                    "it", Limits.max_upscale_size)
    webhook_allowed_hosts: tuple[str, ...] = setting(
        "WEBHOOK_ALLOWED_HOSTS", "Where a job's `callback_url` may point, comma-separated: `*` (any host at public "
        "addresses only), `*.example.com`, an exact name (at any address: the operator vouches for it), or addresses "
        "and networks (`10.0.0.5`, `10.0.0.0/8`). Private, loopback and link-local addresses (169.254.169.254) are "
        "reached only through an exact name or an address listed here, checked again at connect time. Empty: "
        "webhooks are off (the model server also needs WEBHOOK_SECRET)", ())
    min_size: int = MIN_SIZE

    @functools.cached_property
    def webhook_hosts(self) -> HostPolicy:
        """WEBHOOK_ALLOWED_HOSTS read (a malformed entry raises ValueError: a configuration error)."""
        return HostPolicy(self.webhook_allowed_hosts)

    @property
    def limits(self) -> Limits:
        """The bounds as the contract takes them (and checks against the protocol's own)."""
        return Limits(max_prompt_length=self.max_prompt_length, max_steps=self.max_steps, min_size=self.min_size,
                      max_width=self.max_width, max_height=self.max_height, max_images=self.max_images,
                      default_steps=self.default_steps, default_size=self.default_size,
                      default_preset=self.default_preset, max_upscale_size=self.max_upscale_size)
