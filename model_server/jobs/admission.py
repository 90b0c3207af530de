"""Whether a job may be queued: everything checked at submit that the job table does not know.

``check``, at once on the IO thread: the model is ready; the params keep this server's limits
(the codec has already held them to the protocol's bounds) and the pipeline can run them (its
samplers' step ranges; the model, LoRAs and preset named); the uploads the mode needs are there and within
MAX_UPLOAD_BYTES; the machine has the configured free memory. The table then checks its own
bounds (queue capacity, the per-client cap, shutdown). ``check_disk``: the outputs disk has the
free space MIN_FREE_DISK_MB asks for. ``decode_images``, the slow part, runs
after those, off the IO thread (model_server.transport.decoding).
"""

from __future__ import annotations

import time

from common.webhook_hosts import callback_violation
from model_server import errors, memory
from model_server.errors import Rejection
from model_server.jobs.disk import StorageHealth
from model_server.models.model_set import ModelSet
from model_server.settings import ModelServerSettings
from model_server.uploads import as_init_image, decode, decode_mask, header_size
from model_server.worker import ModelStatus
from protocol import contract
from protocol.control import module_named
from protocol.messages import GenerationParams, ModelState, Submit


def check(msg: Submit, status: ModelStatus, settings: ModelServerSettings) -> None:
    """Raise a Rejection saying why the Submit cannot be queued now (all but its images' content)."""
    _ready(status)
    _runnable(msg.params, status.pipeline, settings)
    _uploads(msg, settings)
    floor = settings.min_free_memory_mb * 2**20
    available = memory.available_bytes()
    if floor and available is not None and available < floor:
        raise errors.out_of_memory_floor(available // 2**20, floor // 2**20)


def source_pixels(msg: Submit) -> int:
    """An upscale job's result pixels, from its upload's header (what its memory grows with); 0 for another job."""
    if msg.params.mode != "upscale" or not msg.init_image:
        return 0
    try:
        width, height = header_size(msg.init_image, "init_image")
    except Rejection:
        return 0  # refused when it is decoded, saying why
    width, height = contract.upscale_size(width, height, msg.params)
    return width * height


def check_disk(health: StorageHealth | None) -> None:
    """Refuse while the outputs disk is under its free-space mark (retryable): better than a job
    whose result cannot be kept."""
    low = health.low_on_space() if health is not None else None
    if low is not None:
        raise errors.disk_low(*low)


def _uploads(msg: Submit, settings: ModelServerSettings) -> None:
    p, data, mask = msg.params, msg.init_image, msg.mask
    _control_uploads(msg, settings)
    if p.mode == "detect":
        if not data or mask:
            raise errors.invalid("a detect job takes one image and no mask", "Send the image to preprocess.")
        return
    if p.mode == "txt2img":
        if data or mask:
            raise errors.invalid("an image was sent for a txt2img job", "Send mode img2img or inpaint with it.")
        return
    if not data:
        raise errors.invalid(f"{p.mode} needs an init image", "Send init_image (a PNG, JPEG or WebP image).")
    if mask and p.mode != "inpaint":
        raise errors.invalid(f"a mask was sent for an {p.mode} job", "Send mode inpaint with it.")
    if p.mode == "inpaint" and not mask and msg.mask_from != "alpha":
        raise errors.invalid("inpaint needs a mask", "Send mask: white where to repaint, black where to keep.")
    for what, blob in (("init image", data), ("mask", mask)):
        if len(blob) > settings.max_upload_bytes:
            raise errors.invalid(f"the {what} is {len(blob):,} bytes, more than {settings.max_upload_bytes:,}",
                                 "Send a smaller image (MAX_UPLOAD_BYTES).")
    no_step = contract.runs_no_step(p)
    if no_step:
        raise errors.invalid(*no_step)


def _control_uploads(msg: Submit, settings: ModelServerSettings) -> None:
    """One image per control unit (b"": the init image's) and, if any, one mask per unit (b"": none), each within
    MAX_UPLOAD_BYTES; the inpaint module with a mask to fill (the job's or its own)."""
    p, images, masks = msg.params, msg.control_images, msg.control_masks
    if masks and len(masks) != len(p.controls):
        raise errors.invalid(f"{len(p.controls)} control units came with {len(masks)} masks",
                             "Send one mask per unit (empty for a unit without one), or none.", "controls")
    for i, blob in enumerate(masks):
        if len(blob) > settings.max_upload_bytes:
            raise errors.invalid(f"the mask of controls[{i}] is {len(blob):,} bytes, more than "
                                 f"{settings.max_upload_bytes:,}", "Send a smaller mask (MAX_UPLOAD_BYTES).",
                                 "controls")
    for i, unit in enumerate(p.controls):
        if (module_named(unit.module) == "inpaint_only" and p.mode not in ("inpaint", "detect")
                and not (i < len(masks) and masks[i])):
            raise errors.invalid(f"controls[{i}]: the inpaint module needs a mask to fill: the job's (an init "
                                 "image and a mask) or the unit's own", "Send the unit's mask, or an inpainting "
                                 "job, or use another module.", "controls")
    if p.mode == "detect":  # its image is the init image
        if len(p.controls) != 1:
            raise errors.invalid("a detect job runs one preprocessor", "Send one control unit naming its module.",
                                 "controls")
        return
    if len(images) != len(p.controls):
        raise errors.invalid(f"{len(p.controls)} control units came with {len(images)} images",
                             "Send one image per unit (empty for the init image).", "controls")
    for i, blob in enumerate(images):
        if not blob and p.mode == "txt2img":
            raise errors.invalid(f"controls[{i}] has no image", "Send each unit's image (base64), or an init "
                                 "image for units to share.", "controls")
        if len(blob) > settings.max_upload_bytes:
            raise errors.invalid(f"the image of controls[{i}] is {len(blob):,} bytes, more than "
                                 f"{settings.max_upload_bytes:,}", "Send a smaller image (MAX_UPLOAD_BYTES).",
                                 "controls")


def decode_controls(msg: Submit, settings: ModelServerSettings) -> tuple[list, list]:
    """Each control unit's own image, upright RGB within the size bound (None: it takes the init image), and its
    mask, L with white where it acts (None: it has none; a unit's mask is read as its luminance, as A1111's)."""
    side = max(msg.params.width, msg.params.height)
    images = [decode(blob, "control_image", settings.max_upload_pixels, side).convert("RGB") if blob else None
              for blob in msg.control_images]
    masks = [decode(blob, "control_mask", settings.max_upload_pixels, side).convert("L") if blob else None
             for blob in msg.control_masks]
    return images, masks + [None] * (len(images) - len(masks))


def decode_images(msg: Submit, settings: ModelServerSettings):
    """The checked Submit's init image, mask, control images and control masks, decoded (None when the mode has
    none); a Rejection (invalid params) when one cannot be used."""
    p, data, mask = msg.params, msg.init_image, msg.mask
    controls = decode_controls(msg, settings)
    if p.mode == "detect":  # the preprocessor takes the image at its own size
        return decode(data, "init_image", settings.max_upload_pixels).convert("RGB"), None, *controls
    if p.mode == "txt2img":
        return None, None, *controls
    if mask and msg.mask_from == "alpha":  # OpenAI's edits: as OpenAI, the mask must be the image's size
        image_size, mask_size = header_size(data, "init_image"), header_size(mask, "mask")
        if image_size != mask_size:
            raise errors.invalid(f"the mask is {mask_size[0]}x{mask_size[1]} but the image is "
                                 f"{image_size[0]}x{image_size[1]}: they must be the same size",
                                 "Send a mask of the image's width and height.", "mask")
    if p.mode == "upscale":
        return _upscale_source(data, p, settings), None, *controls
    # Decoded once: the mask may come from its alpha.
    source = decode(data, "init_image", settings.max_upload_pixels, max(p.width, p.height))
    init = as_init_image(source, p.width, p.height, p.resize_mode)
    if p.mode != "inpaint":
        return init, None, *controls
    return init, decode_mask(mask, source, msg.mask_from, p.width, p.height, settings.max_upload_pixels, p.mask_blur,
                             p.resize_mode), *controls


def _upscale_source(data: bytes, p: GenerationParams, settings: ModelServerSettings):
    """An upscale job's image, RGB at its own size, once its result is known to fit MAX_UPSCALE_SIZE."""
    width, height = header_size(data, "init_image")
    out_w, out_h = contract.upscale_size(width, height, p)
    if p.upscale and (out_w < width or out_h < height):
        raise errors.invalid(f"an upscale by {p.upscale:g} would shrink the image", "Use a factor of 1 or more.",
                             "upscale")
    most = settings.limits.max_upscale_size
    if max(out_w, out_h) > most:
        raise errors.invalid(f"the image is {width}x{height}: upscaled it would be {out_w}x{out_h}, past "
                             f"{most} pixels a side (MAX_UPSCALE_SIZE)",
                             f"Use a factor of at most {most / max(width, height):.2f} for this image, or a smaller "
                             "image.", "upscale")
    return decode(data, "init_image", settings.max_upload_pixels).convert("RGB")


def _ready(status: ModelStatus) -> None:
    state = status.model_state
    if state is ModelState.LOADING:
        raise errors.still_loading(time.monotonic() - status.load_started, status.progress.status())
    if state is ModelState.STOPPING:
        raise Rejection(errors.shutting_down())
    if state is not ModelState.READY:
        raise errors.load_failed(status.error)


def _runnable(p: GenerationParams, pipeline: ModelSet, settings: ModelServerSettings) -> None:
    broken = (contract.violation(p, settings.limits) or contract.hires_violation(p, settings.limits)
              or callback_violation(p.callback_url, settings.webhook_hosts))
    if broken is not None:
        raise errors.invalid(broken[1], broken[2], broken[0])
    if p.scheduler not in pipeline.schedulers():
        raise errors.invalid(f"unknown scheduler {p.scheduler!r}", f"Use one of: {', '.join(pipeline.schedulers())}.")
    most = pipeline.max_steps(p.scheduler)
    if p.steps > most:  # e.g. LCM's schedule has 50 points: more would fail mid-job
        raise errors.invalid(f"the {p.scheduler} sampler runs at most {most} steps, not {p.steps}",
                             f"Use 1 to {most} steps with {p.scheduler}, or another sampler.")
    pipeline.check(p)  # the model, LoRAs and preset it names
