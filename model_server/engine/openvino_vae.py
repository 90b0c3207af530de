"""The VAE decoder on the OpenVINO runtime, beside the OpenVINO UNet: a drop-in for diffusers' VAE.

Why: after the UNet the decode is the largest part of an image (measured: 5-7 s on torch against
3-6 s for the peer's OpenVINO decoder, SD v1.4 at 512x512; docs/performance.md). Only ``decode``
moves: ``encode`` (image-to-image, inpainting) stays the torch VAE's, rarely used and not worth a
second compiled model's memory.

Latents are decoded one image at a time, so one compiled shape per image size serves any number
of images per request, and the decoder's activations stay those of one image.

A model published as OpenVINO IR only (openvino_ir_model) has no torch VAE: its encoder's IR encodes, one
image at a time too, and nothing steps aside to torch; above the tiling size its decoder runs over overlapping
tiles of one shape (one compile), blended where they overlap (``tile``, set by vae_tiles for the plan's tiled
decoder), so a large image's decode holds a tile's activations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution

from model_server.engine.openvino_compiled import StaticIR
from model_server.engine.openvino_convert import IR_NAMES


class OpenVinoVae(torch.nn.Module):
    """diffusers' AutoencoderKL as the pipelines call it, decoding on the compiled IR. ``config``
    and ``dtype`` are ``like``'s; ``encode`` is the torch VAE's, or the ``encoder`` IR's when there is no torch
    VAE (``like`` then holds no weights)."""

    def __init__(self, decoder: Path, like: torch.nn.Module, precision: str, threads: int,
                 encoder: Path | None = None):
        super().__init__()
        self.torch_vae = None if encoder else like
        self.config = like.config
        self._dtype = like.dtype
        self._ir = StaticIR(decoder, precision, threads)
        self._latent = next(iter(self._ir.inputs))  # ours "latent", optimum-intel's "latent_sample"
        self._encoder = StaticIR(encoder, precision, threads) if encoder else None
        self.calls = 0
        self.decode_on_torch = False  # set for a job the compiled graph cannot run (tiling's circular padding)
        self.tile = 0  # pixels: decode in overlapping tiles this size (no torch VAE to step aside to); 0 whole

    @classmethod
    def of(cls, ir_dir: str | Path, vae: torch.nn.Module, precision: str, threads: int) -> "OpenVinoVae":
        """The decoder converted from ``vae`` (openvino_convert) in ``ir_dir``, the torch VAE beside it."""
        return cls(Path(ir_dir) / IR_NAMES["vae_decoder"], vae, precision, threads)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def _scale(self) -> int:
        """Pixels per latent, as diffusers' pipelines compute their ``vae_scale_factor``."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def compile_for(self, height: int, width: int) -> None:
        """Compile for images of ``height`` x ``width`` pixels, replacing the last size."""
        self._ir.compile_for({self._latent: [1, self.config.latent_channels, height // self._scale,
                                             width // self._scale]})

    def report(self) -> dict[str, str | float | None]:
        """The image size the decoder is compiled for and its compile time, for /health."""
        if self._ir.shapes is None:
            return {}
        _, _, height, width = self._ir.shapes[self._latent]
        return {"openvino_vae_compiled_for": f"{width * self._scale}x{height * self._scale}",
                "openvino_vae_compile_seconds": self._ir.compile_seconds}

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        if self._encoder is None:
            return self.torch_vae.encode(x, return_dict=return_dict)
        # The encoder's moments (mean and log-variance), one image at a time, as the torch VAE's posterior.
        moments = torch.cat([torch.from_numpy(self._encoder.infer({"sample": one.float().numpy()}))
                             for one in x.split(1)])
        posterior = DiagonalGaussianDistribution(moments.to(x.dtype))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None, **kwargs):
        if self.decode_on_torch and self.torch_vae is not None:
            return self.torch_vae.decode(z, return_dict=return_dict, generator=generator, **kwargs)
        self.calls += 1
        decode = self._tiled if self.tile and max(z.shape[-2:]) * self._scale > self.tile else self._whole
        images = [decode(one.float().numpy()) for one in z.split(1)]
        self._ir.release_buffers()  # the decode's activations (the job's largest) go before the images are made
        sample = torch.cat(images).to(z.dtype)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def _whole(self, latent: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._ir.infer({self._latent: latent}))

    def _tiled(self, latent: np.ndarray) -> torch.Tensor:
        """One image's latents decoded in overlapping tiles of ``tile`` pixels (a quarter overlapping, the last
        ones flush with the edges, so every tile has the compiled shape), each weighted by a window that falls
        towards its edges, so the seams blend."""
        side = self.tile // self._scale
        height, width = latent.shape[2:]
        tile_h, tile_w = min(side, height), min(side, width)
        out = np.zeros((1, 3, height * self._scale, width * self._scale), np.float32)
        weight = np.zeros((1, 1, *out.shape[2:]), np.float32)
        window = _window(tile_h * self._scale)[:, None] * _window(tile_w * self._scale)[None, :]
        for top in _starts(height, tile_h):
            for left in _starts(width, tile_w):
                tile = self._ir.infer({self._latent: np.ascontiguousarray(
                    latent[:, :, top:top + tile_h, left:left + tile_w])})
                y, x = top * self._scale, left * self._scale
                out[:, :, y:y + tile.shape[2], x:x + tile.shape[3]] += tile * window
                weight[:, :, y:y + tile.shape[2], x:x + tile.shape[3]] += window
        return torch.from_numpy(out / weight)


def _starts(length: int, tile: int) -> list[int]:
    """Where tiles of ``tile`` start along ``length``: a quarter overlapping, the last flush with the end."""
    stride = max(1, tile * 3 // 4)
    starts = list(range(0, max(length - tile, 0) + 1, stride))
    return starts if starts[-1] == length - tile else starts + [length - tile]


def _window(size: int) -> np.ndarray:
    """A tile's blending weights along one side: 1 in the middle, falling linearly over the outer eighths (never 0:
    a pixel only one tile covers keeps its value)."""
    ramp = max(1, size // 8)
    position = np.arange(size, dtype=np.float32)
    return np.clip(np.minimum(position + 1, size - position) / ramp, 1 / ramp, 1.0)
