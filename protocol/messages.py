"""Every message that crosses the gateway <-> model-server boundary.

Requests are imperative (``Ping``, ``Submit``, ...); replies and events are nouns or past
tense (``Pong``, ``Accepted``, ``Progress``, ``Completed``...). Each is a msgspec Struct tagged
with its class name, so a decoder knows the type without guessing. Within protocol version 1
changes are additive only: new fields must have defaults, no field changes type, no tag is
renamed (``tests/protocol/test_golden.py`` keeps committed v1 bytes decoding).

One file over 250 lines on purpose: the whole wire protocol, the parameter contract included,
reads in one place, and the golden bytes are defined against it.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal, Union

import msgspec

from protocol.errors import ErrorCode
from protocol.presets import PRESET_NAMES


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class StopMode(str, enum.Enum):
    """How to stop a running job: drop it, or keep what it has (AUTOMATIC1111's interrupt/skip)."""

    CANCEL = "cancel"  # stop at the next step; the job ends cancelled, nothing decoded
    INTERRUPT = "interrupt"  # stop at the next step, decode what is there; no further images
    SKIP = "skip"  # like interrupt for the current image only; the next images still run


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


# Scheduler names both sides agree on; "default" is the model's own (PNDM for SD v1.4).
# "lcm" is for LCM-distilled weights (the "fast" preset's LCM-LoRA); other weights give mush with it.
SCHEDULERS = ("default", "pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "lcm")
IMAGE_FORMATS = ("png", "jpeg", "webp")
CONTROL_MODES = ("balanced", "prompt", "control")
# "detect": a control unit's preprocessor run on the init image (A1111's /controlnet/detect), no diffusion.
MODES = ("txt2img", "img2img", "inpaint", "upscale", "detect")

# The absolute bounds of one request, enforced by both sides (GenerationParams below). Deployments
# tighten the configurable ones (protocol.contract.Limits: MAX_STEPS, MAX_WIDTH...), never widen them.
MAX_PROMPT_LENGTH = 2000
MAX_STEPS = 150  # A1111's own ceiling; every scheduler here runs 1-150 (tests/protocol/test_contract.py)
MIN_SIZE = 64
MAX_SIZE = 2048  # 2048x2048 needs ~40 GB of attention activations without slicing: the hard ceiling
MAX_IMAGES = 8
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 30.0
MAX_UPLOAD_BYTES = 32 * 2**20  # an init image's encoded size; deployments narrow it (MAX_UPLOAD_BYTES)
MAX_DEEP_CACHE = 10
# token_merging above this: most tokens share one output and detail dissolves (both sides refuse it)
MAX_TOKEN_MERGING = 0.75
# At least one visible character: what is left after control characters and spaces are dropped.
_VISIBLE = r"[^\s\x00-\x1f\x7f-\x9f]"
# A model's or LoRA's name as the model server lists it (GET /v1/models, /sdapi/v1/loras): no control
# characters, and for a LoRA none of the characters that end an A1111 prompt tag (<lora:NAME:WEIGHT>).
MAX_NAME_LENGTH = 200
_MODEL_NAME = r"^[^\x00-\x1f\x7f-\x9f]*$"
_LORA_NAME = r"^[^\x00-\x1f\x7f-\x9f<>:]+$"
MAX_LORAS = 8
MAX_LORA_WEIGHT = 4.0
MAX_RESIDENT_MODELS = 16  # models a server may keep in memory at once (MAX_RESIDENT_MODELS's bound)
MAX_HIRES_SCALE = 4.0  # hires fix: the second pass at up to 4x the first's sides (the size bounds still hold)
MAX_UPSCALE = 8.0  # an upscale job's factor; its output's side is also bounded (Limits.max_upscale_size)
MAX_UPSCALED_SIZE = 8192
MAX_CALLBACK_URL_LENGTH = 2048
MAX_DEADLINE_SECONDS = 7 * 86400
MAX_CONTROLS = 3  # ControlNet units per job (A1111's default max_models_num)
MAX_CONTROL_WEIGHT = 2.0  # A1111's slider's end
MAX_CONTROL_THRESHOLD = 1024.0  # a preprocessor's threshold_a/b (canny's 1-255, tile's 1-8, blur's sigma...)
MAX_LISTED_JOBS = 100  # finished jobs one listing returns (GET /v1/jobs)


def _bound(base, *, doc: str, hint: str, limit: str | None = None, floor: str | None = None, **meta):
    """A field type with its absolute bounds, its user-facing doc and hint (templates over the
    limits' names, e.g. "{max_steps}") and which configurable limit tightens it (``limit`` for
    the upper bound, ``floor`` for the lower)."""
    extra = {"doc": doc, "hint": hint, "limit": limit, "floor": floor}
    return Annotated[base, msgspec.Meta(**meta, extra=extra)]


class _Shape(msgspec.Struct, kw_only=True):
    """Base of the shapes messages carry; unknown fields from a newer peer are ignored."""


class _Msg(_Shape, tag=True, omit_defaults=True):
    """Base of messages: tagged with the class name, so the decoder knows the type."""


# --- shared shapes -------------------------------------------------------------------------


class ErrorInfo(_Shape):
    code: ErrorCode
    message: str
    hint: str = ""
    retryable: bool = False
    retry_after: float | None = None
    field: str = ""  # the request field at fault (GenerationParams' or an upload's name), when one is


class LoraRef(_Shape):
    """One LoRA applied to a job: a name the model server lists, and its strength."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH, pattern=_LORA_NAME)]
    weight: Annotated[float, msgspec.Meta(ge=-MAX_LORA_WEIGHT, le=MAX_LORA_WEIGHT)] = 1.0


class HiresFix(_Shape):
    """A1111's hires fix: after the image is made at the job's size, it is upscaled (in latent space, or
    in pixels by an upscaler) and repainted at the larger size by a second, image-to-image pass."""

    scale: Annotated[float, msgspec.Meta(ge=1.0, le=MAX_HIRES_SCALE)] = 2.0
    # The second pass's size; 0 = the first's times scale (rounded down to a multiple of 8).
    width: Annotated[int, msgspec.Meta(ge=0, le=MAX_SIZE, multiple_of=8)] = 0
    height: Annotated[int, msgspec.Meta(ge=0, le=MAX_SIZE, multiple_of=8)] = 0
    # A name from GET /v1/upscalers: "Latent" (and its variants) upscale the latents, the others the pixels.
    upscaler: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH, pattern=_MODEL_NAME)] = "Latent"
    steps: Annotated[int, msgspec.Meta(ge=0, le=MAX_STEPS)] = 0  # 0 = the job's steps
    strength: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.5  # A1111's denoising_strength
    prompt: Annotated[str, msgspec.Meta(max_length=MAX_PROMPT_LENGTH)] = ""  # "" = the job's prompt
    negative_prompt: Annotated[str, msgspec.Meta(max_length=MAX_PROMPT_LENGTH)] = ""


class FaceRestoration(_Shape):
    """Face restoration (A1111's restore_faces and its extras' GFPGAN visibility): each face found is
    restored by a model from GET /v1/face-restorers and blended in at ``visibility``."""

    # A name from GET /v1/face-restorers; "" = the first listed.
    model: Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH, pattern=_MODEL_NAME)] = ""
    visibility: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0  # 0: the original faces, 1: the restored


class ControlUnit(_Shape):
    """One ControlNet unit: its image (carried beside the params: ``Submit.control_images``) through a
    preprocessor (``module``: protocol.control, GET /v1/controlnets) steers the denoising through a
    ControlNet (``model``) at ``weight``, from ``guidance_start`` to ``guidance_end`` of the steps."""

    module: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH, pattern=_MODEL_NAME)] = "none"
    # A name from GET /v1/controlnets; "" only for a detect job (the preprocessor alone).
    model: Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH, pattern=_MODEL_NAME)] = ""
    weight: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_CONTROL_WEIGHT)] = 1.0
    guidance_start: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    guidance_end: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0
    # balanced; prompt: the prompt matters more (the control fades towards the shallow layers); control: the
    # control matters more (it steers the conditional half of the guidance only), as A1111 names them.
    control_mode: Literal[CONTROL_MODES] = "balanced"
    # How the control image meets the job's size when their shapes differ (as GenerationParams.resize_mode).
    resize_mode: Literal["stretch", "crop", "fill"] = "crop"
    processor_res: Annotated[int, msgspec.Meta(ge=64, le=MAX_SIZE)] = 512  # the preprocessor's working side
    pixel_perfect: bool = False  # processor_res from the job's size instead
    # The preprocessor's own two settings (canny's low and high thresholds...); -1: its default.
    threshold_a: Annotated[float, msgspec.Meta(ge=-1.0, le=MAX_CONTROL_THRESHOLD)] = -1.0
    threshold_b: Annotated[float, msgspec.Meta(ge=-1.0, le=MAX_CONTROL_THRESHOLD)] = -1.0
    # The job's images end with this unit's detected map (ImageInfo.control_map), as A1111's extension returns
    # them (its save_detected_map); an IP-Adapter's unit has none.
    return_map: bool = False


class GenerationParams(_Shape):
    """One text-to-image request, already validated and with a concrete seed.

    This is the one parameter contract: every bound lives here (msgspec ``Meta``), so the model
    server's strict decode enforces it against any peer, and the gateway's request types and
    ``/openapi.json`` are derived from it (``protocol.contract``). A new field is added here, in
    the pipeline and in the docs.
    """

    prompt: _bound(str, min_length=1, max_length=MAX_PROMPT_LENGTH, pattern=_VISIBLE, limit="max_prompt_length",
                   doc="What to draw; 1-{max_prompt_length} characters.",
                   hint="Try a shorter prompt: at most {max_prompt_length} characters.")
    seed: _bound(int, ge=0, le=MAX_SEED,
                 doc="Random seed; the same seed and parameters give the same image. Random when absent; "
                     "always reported back.",
                 hint=f"Use a whole number from 0 to {MAX_SEED}, or leave it out for a random one.")
    negative_prompt: _bound(str, max_length=MAX_PROMPT_LENGTH, limit="max_prompt_length",
                            doc="What to steer away from; at most {max_prompt_length} characters.",
                            hint="Keep the negative prompt within {max_prompt_length} characters.") = ""
    steps: _bound(int, ge=1, le=MAX_STEPS, limit="max_steps",
                  doc="Denoising steps (1-{max_steps}; default: the preset's, {default_steps} for quality).",
                  hint="Use 1 to {max_steps} steps ({default_steps} is the default; fewer is faster).") = 25
    guidance_scale: _bound(float, ge=0, le=MAX_GUIDANCE,
                           doc=f"Classifier-free guidance (0-{MAX_GUIDANCE:g}; default: the preset's, 7.5 for "
                               "quality); 1 or less disables it and halves the work.",
                           hint=f"Use a number from 0 to {MAX_GUIDANCE:g} (7.5 is the default).") = 7.5
    width: _bound(int, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8, limit="max_width", floor="min_size",
                  doc="Image width in pixels, a multiple of 8 ({min_size}-{max_width}; default {default_size}).",
                  hint="Use a multiple of 8 from {min_size} to {max_width}.") = 512
    height: _bound(int, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8, limit="max_height", floor="min_size",
                   doc="Image height in pixels, a multiple of 8 ({min_size}-{max_height}; default {default_size}).",
                   hint="Use a multiple of 8 from {min_size} to {max_height}.") = 512
    scheduler: _bound(Literal[SCHEDULERS],
                      doc="Sampler (default: the preset's); 'default' is the model's own (PNDM for SD v1.4); "
                          "'lcm' only suits LCM weights (the fast preset).",
                      hint=f"Use one of: {', '.join(SCHEDULERS)}.") = "default"
    n: _bound(int, ge=1, le=MAX_IMAGES, limit="max_images",
              doc="Images to make (1-{max_images}), with seeds seed, seed+1, ...; /generate takes 1.",
              hint="Ask for 1 to {max_images} images.") = 1
    format: _bound(Literal[IMAGE_FORMATS], doc="Output format (default png).",
                   hint=f"Use one of: {', '.join(IMAGE_FORMATS)}.") = "png"
    quality: _bound(int, ge=1, le=100, doc="JPEG/WebP quality (default 90).",
                    hint="Use a whole number from 1 to 100.") = 90
    # Make a cheap low-res preview from the latents after each step.
    preview: _bound(bool, doc="Keep a low-res preview while the job runs: GET /v1/jobs/{{id}}/preview "
                              "(default false).", hint="Use true or false.") = False
    # A protocol.presets name; "" (older gateways) = no LCM-LoRA, full VAE.
    preset: _bound(Literal[("",) + PRESET_NAMES], doc="Speed/quality preset (default {default_preset}): it sets "
                   "the default steps, guidance and sampler, and 'fast' also switches on LCM-LoRA and the tiny "
                   "VAE. GET /v1/presets lists them.",
                   hint=f"Use one of: {', '.join(PRESET_NAMES)} (GET /v1/presets).") = ""
    # UNet in full every Nth step, shallow layers only in between; 0 or 1 = off.
    deep_cache: _bound(int, ge=0, le=MAX_DEEP_CACHE,
                       doc="Step caching (DeepCache): run the UNet in full every Nth step and only its shallow "
                           "layers in between; 2-5 trade some detail for up to ~1.7x speed, 0 or 1 is off "
                           "(default: the preset's, 3 for balanced).",
                       hint=f"Use 0 (off) to {MAX_DEEP_CACHE}; 3 caches two steps out of three.") = 0
    # Share of tokens merged before the largest self-attentions (ToMe); 0 = off.
    token_merging: _bound(float, ge=0, le=MAX_TOKEN_MERGING,
                          doc="Token merging ratio (ToMe, A1111's 'token merging ratio'): the share of the 4,096 "
                              "tokens of a 512x512 image's largest self-attentions merged into similar ones before "
                              "attention; 0.5 made a step 12-20% faster on a 2-core CPU, for a small loss of detail "
                              f"(0-{MAX_TOKEN_MERGING}; default: the preset's, 0 for all).",
                          hint=f"Use a share from 0 (off) to {MAX_TOKEN_MERGING}; 0.5 is a common choice.") = 0.0
    # img2img: the Submit carries an init image; inpaint: and a mask (set by the gateway from the
    # request, not sent by users).
    mode: _bound(Literal[MODES], doc="txt2img; img2img when an init image is sent; inpaint with a mask too.",
                 hint=f"Use one of: {', '.join(MODES)}.") = "txt2img"
    strength: _bound(float, ge=0.0, le=1.0,
                     doc="Image-to-image only: how much of the init image is repainted, 0-1 (default 0.75); "
                         "the steps run are steps x strength, at least one.",
                     hint="Use a number from 0 to 1 (0.75 is the default); with fewer steps, a higher one.") = 0.75
    resize_mode: _bound(Literal["stretch", "crop", "fill"],
                        doc="Image-to-image and inpainting: how the init image (and mask) meet width x height when "
                            "their shapes differ: stretch (A1111's 'just resize', the default), crop (cover, keeping "
                            "the aspect, and cut the centre) or fill (fit inside, keeping the aspect, and extend the "
                            "edges into the rest).",
                        hint="Use stretch, crop or fill.") = "stretch"
    mask_blur: _bound(int, ge=0, le=64,
                      doc="Inpainting only: the mask's edge is blurred by this many pixels, so the repainted "
                          "part blends in (A1111's mask_blur; default 4).",
                      hint="Use 0 (a hard edge) to 64 pixels; 4 is the default.") = 4
    # A name from the model server's list (ModelList); "" = the server's default model (SD_MODEL).
    model: _bound(str, max_length=MAX_NAME_LENGTH, pattern=_MODEL_NAME,
                  doc="The model (checkpoint) to run: a name from GET /v1/models (default: the server's default "
                      "model). A switch loads it in place of the one in memory first.",
                  hint="Use a name from GET /v1/models, or leave model out for the default one.") = ""
    loras: _bound(list[LoraRef], max_length=MAX_LORAS,
                  doc=f"LoRAs to apply, up to {MAX_LORAS}: a list of objects with a name from GET /v1/loras and a "
                      f"weight from -{MAX_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g} (default 1). A1111's prompt syntax "
                      "<lora:NAME:WEIGHT> works too.",
                  hint=f"Send at most {MAX_LORAS} LoRAs, each an object with a name (GET /v1/loras) and a weight "
                       f"from -{MAX_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}.") = []
    tiling: _bound(bool, doc="Seamless tiling (A1111's tiling): the image wraps around at its edges, so copies of it "
                             "tile a surface without seams (textures, patterns). Runs the UNet on torch (default "
                             "false).", hint="Use true or false.") = False
    hires: _bound(HiresFix | None,
                  doc=f"Hires fix (text-to-image only): make the image at width x height, upscale it by scale (1-"
                      f"{MAX_HIRES_SCALE:g}, or to its own width and height) with an upscaler from GET /v1/upscalers "
                      "('Latent' by default), then repaint it at that size in a second pass of its own steps (0: "
                      "the job's) at strength (default 0.5), with its own prompt if given. The larger size must "
                      "keep {max_width}x{max_height}.",
                  hint="Send an object such as {{\"scale\": 2, \"strength\": 0.5}}, or leave hires out.") = None
    task: _bound(str, max_length=MAX_NAME_LENGTH, pattern=_MODEL_NAME,
                 doc="A label of the client's own for the job (A1111's force_task_id, which its "
                     "/internal/progress follows).",
                 hint="Use a short printable label, or leave task out.") = ""
    face_restoration: _bound(FaceRestoration | None,
                             doc="Restore the faces in each image (any mode; after the hires fix or the upscale) "
                                 "with a model from GET /v1/face-restorers (FACE_RESTORER_DIR), blended in at "
                                 "visibility (0-1, default 1).",
                             hint="Send an object such as {{\"model\": \"GFPGANv1.4\", \"visibility\": 1}} "
                                  "(GET /v1/face-restorers), or leave face_restoration out.") = None
    controls: _bound(list[ControlUnit], max_length=MAX_CONTROLS,
                     doc=f"ControlNet units, up to {MAX_CONTROLS}: each an object with an image (base64; left out "
                         "with an init image: that image), a module (preprocessor: canny, none, ...), a model from "
                         f"GET /v1/controlnets, weight (0-{MAX_CONTROL_WEIGHT:g}, default 1), guidance_start and "
                         "guidance_end (0-1), control_mode (balanced, prompt, control), resize_mode (crop, fill, "
                         "stretch), processor_res, pixel_perfect, threshold_a and threshold_b.",
                     hint=f"Send at most {MAX_CONTROLS} units such as {{{{\"image\": \"<base64>\", \"module\": "
                          "\"canny\", \"model\": \"<a name from GET /v1/controlnets>\"}}.") = []
    deadline_seconds: _bound(float, ge=0.0, le=MAX_DEADLINE_SECONDS,
                             doc="Seconds from submission by which the job must be done (0: none). Refused at once "
                                 "(422 deadline, with the prediction and what would fit) when this host's measured "
                                 "speed and the queue ahead say it cannot be; a job still queued when it passes ends "
                                 "failed with that reason.",
                             hint="Give seconds from now, such as 60, or leave deadline_seconds out.") = 0.0
    callback_url: _bound(str, max_length=MAX_CALLBACK_URL_LENGTH, pattern=r"^(https?://[^\s\x00-\x1f\x7f]+)?$",
                         doc="A webhook: when the job ends (succeeded, failed or cancelled) the server POSTs its "
                             "outcome there, signed as Standard Webhooks says (webhook-id, webhook-timestamp, "
                             "webhook-signature with WEBHOOK_SECRET), retried with backoff. Only hosts in "
                             "WEBHOOK_ALLOWED_HOSTS.",
                         hint="Send an http(s) URL whose host is in the server's WEBHOOK_ALLOWED_HOSTS, or leave "
                              "callback_url out.") = ""
    # mode upscale: the init image upscaled, no diffusion (the prompt only labels the job).
    upscaler: _bound(str, max_length=MAX_NAME_LENGTH, pattern=_MODEL_NAME,
                     doc="Upscale jobs: the upscaler, a name from GET /v1/upscalers (default Lanczos).",
                     hint="Use a name from GET /v1/upscalers.") = ""
    upscaler_2: _bound(str, max_length=MAX_NAME_LENGTH, pattern=_MODEL_NAME,
                       doc="Upscale jobs: a second upscaler whose result is blended in at upscaler_2_visibility "
                           "(A1111's extras' upscaler 2); \"\" for none.",
                       hint="Use a name from GET /v1/upscalers, or leave upscaler_2 out.") = ""
    upscaler_2_visibility: _bound(float, ge=0.0, le=1.0,
                                  doc="Upscale jobs: how much of upscaler_2's result the image is (0-1).",
                                  hint="Use a number from 0 to 1.") = 0.0
    upscale: _bound(float, ge=0.0, le=MAX_UPSCALE,
                    doc=f"Upscale jobs: the factor (1-{MAX_UPSCALE:g}); 0 = to upscale_width x upscale_height, "
                        "covered and centre-cropped. The result's sides stay within {max_upscale_size}.",
                    hint=f"Use a factor from 1 to {MAX_UPSCALE:g}, such as 2 or 4.") = 0.0
    upscale_width: _bound(int, ge=0, le=MAX_UPSCALED_SIZE, limit="max_upscale_size",
                          doc="Upscale jobs without a factor: the result's width (at most {max_upscale_size}).",
                          hint="Use a width of at most {max_upscale_size} pixels.") = 0
    upscale_height: _bound(int, ge=0, le=MAX_UPSCALED_SIZE, limit="max_upscale_size",
                           doc="Upscale jobs without a factor: the result's height (at most {max_upscale_size}).",
                           hint="Use a height of at most {max_upscale_size} pixels.") = 0


def lost_before_start(job) -> bool:
    """A job (a JobView, or the model server's own Job) that its server lost before it ever ran: the
    one kind of ended job that may be placed again under its id, on any server."""
    return (job.state is JobState.FAILED and job.started_at is None and job.error is not None
            and job.error.code is ErrorCode.MODEL_SERVER_LOST)


def has_uploads(params: GenerationParams) -> bool:
    """Whether a job comes with images (an init image, control images): a job queued at a crash waits for
    its gateway to send them again."""
    return params.mode != "txt2img" or bool(params.controls)


def runs_diffusion(params: GenerationParams) -> bool:
    """Whether a job denoises (loads a model, runs steps); upscale and detect jobs do neither."""
    return params.mode not in ("upscale", "detect")


def steps_run(params: GenerationParams) -> int:
    """The denoising steps a job actually runs: image-to-image starts part-way, at steps x strength; a
    hires fix adds its second pass's. An upscale or detect job runs no step (an upscale's tiles are counted
    instead)."""
    if not runs_diffusion(params):
        return 0
    if params.mode != "txt2img":
        return min(int(params.steps * params.strength), params.steps)
    return params.steps + (hires_steps_run(params) if params.hires else 0)


def hires_steps_run(params: GenerationParams) -> int:
    """The hires fix's second pass: its steps (the job's when 0) x its strength, at least one."""
    steps = params.hires.steps or params.steps
    return max(1, min(int(steps * params.hires.strength), steps))


def hires_size(params: GenerationParams) -> tuple[int, int]:
    """The hires fix's second-pass size: its own, or the job's times its scale, down to a multiple of 8."""
    h = params.hires
    if h.width and h.height:
        return h.width, h.height
    if h.width or h.height:  # one side given: the other keeps the aspect
        ratio = (h.width / params.width) if h.width else (h.height / params.height)
        return (h.width or int(params.width * ratio) // 8 * 8), (h.height or int(params.height * ratio) // 8 * 8)
    return int(params.width * h.scale) // 8 * 8, int(params.height * h.scale) // 8 * 8


class ProgressInfo(_Shape):
    step: int = 0
    total_steps: int = 0
    image_index: int = 0
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0
    preview_step: int | None = None  # the step the latest preview shows (FetchPreview gets it)
    # What the job is doing before its first step, when that takes a while (e.g. "loading model X").
    detail: Annotated[str, msgspec.Meta(max_length=300)] = ""


class ModelSwitch(_Shape):
    """A job that had to load its model first: what was in memory, how long the switch took, and the
    server's resident memory at its end (one model is resident at a time)."""

    from_model: str
    to_model: str
    seconds: float
    rss_bytes: int = 0


class ImageInfo(_Shape):
    index: int
    seed: int
    media_type: str
    width: int
    height: int
    size_bytes: int
    control_map: int | None = None  # the control unit whose detected map this is (its return_map); None: generated


class WebhookStatus(_Shape):
    """Where a job's webhook stands (a job with ``callback_url``, once it has ended)."""

    event_id: str  # the webhook-id header: one per job end, kept across retries and restarts
    state: Literal["pending", "delivered", "failed"] = "pending"  # failed: every attempt used, or refused for good
    attempts: int = 0
    last_status: int | None = None  # the receiver's last HTTP status
    last_error: Annotated[str, msgspec.Meta(max_length=300)] = ""
    next_attempt_at: float | None = None  # wall clock, while pending
    delivered_at: float | None = None


class JobMemory(_Shape):
    """A job's memory: its peak predicted at submit (the server's memory budget) and measured as it ran."""

    predicted_peak_bytes: int = 0
    # of the prediction: measured, scaled (another size), parts, prior (model_server/jobs/footprint)
    basis: Annotated[str, msgspec.Meta(max_length=20)] = ""
    peak_rss_bytes: int = 0  # the server's largest resident memory while it ran (0 until it ends)


class JobView(_Shape):
    """What anyone may know about a job; shared by replies and events."""

    job_id: str
    state: JobState
    created_at: float
    params: GenerationParams
    queue_position: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: ProgressInfo | None = None
    error: ErrorInfo | None = None
    images: list[ImageInfo] = []
    cancel_requested: bool = False
    interrupted: bool = False  # finished early by an interrupt/skip; images hold what was made
    # What ran the job's UNet (e.g. "openvino int8 (hybrid)", "torch bfloat16: deep_cache runs on torch");
    # empty until it starts.
    engine: Annotated[str, msgspec.Meta(max_length=300)] = ""
    model: str = ""  # the model that ran it (its name in the model list); empty until it starts
    model_switch: ModelSwitch | None = None
    # A1111's "Lora hashes": each applied LoRA's name -> the short hash of its file; set when it starts.
    lora_hashes: Annotated[dict[str, str], msgspec.Meta(max_length=MAX_LORAS)] = {}
    # Why a finished job's images and record are not on disk (the outputs disk failed): they are
    # served from memory until evicted or a restart. Empty when stored, or when OUTPUTS_DIR is off.
    not_stored: Annotated[str, msgspec.Meta(max_length=300)] = ""
    # Queued when its server crashed, before it ran, with uploads that lived in memory only: the
    # restarted server waits for its gateway to place it again (with them), then it fails lost.
    awaiting_uploads: bool = False
    webhook: WebhookStatus | None = None  # its callback_url's delivery, once the job has ended
    memory: JobMemory | None = None  # predicted at submit, measured once it ended


# --- requests (gateway -> model server) ----------------------------------------------------


class Ping(_Msg):
    pass


# A job id: 32 hex digits, the first 8 naming the model server that created it (Pong.server_id), so
# any gateway can tell where a job lives.
JOB_ID_PATTERN = "^[0-9a-f]{32}$"


class Submit(_Msg):
    params: GenerationParams
    client_id: str = ""
    request_id: str = ""
    # Set only when a gateway places a job again after its model server died before starting it:
    # the job keeps its id, so its owner's links still work. "" = the server makes one.
    job_id: Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{32})?$")] = ""
    # img2img: the init image as uploaded (PNG, JPEG or WebP bytes); the model server decodes and
    # checks it (format, pixel count, size) as it does every input.
    init_image: Annotated[bytes, msgspec.Meta(max_length=MAX_UPLOAD_BYTES)] = b""
    # One per params.controls unit, in order, as uploaded; b"" for a unit that takes the init image.
    control_images: Annotated[list[Annotated[bytes, msgspec.Meta(max_length=MAX_UPLOAD_BYTES)]],
                              msgspec.Meta(max_length=MAX_CONTROLS)] = []
    # None, or one per unit as uploaded (b"": that unit has none): white is where the unit acts (its region; for
    # the inpaint module, the part its ControlNet fills), as A1111's unit "mask".
    control_masks: Annotated[list[Annotated[bytes, msgspec.Meta(max_length=MAX_UPLOAD_BYTES)]],
                             msgspec.Meta(max_length=MAX_CONTROLS)] = []
    # inpaint: which parts to repaint, as uploaded. "luminance": white repaints (A1111, ours);
    # "alpha": transparent repaints (OpenAI), and with no mask the init image's own alpha is it; a
    # mask must then be the image's size, as OpenAI requires. "inverted": black repaints (A1111's
    # inpainting_mask_invert).
    mask: Annotated[bytes, msgspec.Meta(max_length=MAX_UPLOAD_BYTES)] = b""
    mask_from: Literal["luminance", "alpha", "inverted"] = "luminance"


# Requests about one job carry the client acting on it: the model server answers "not found" when
# the job is someone else's, exactly as for an unknown id. "" is the operator (an admin key, or a
# gateway from before ownership), who may see every job.


class GetJob(_Msg):
    job_id: str
    client_id: str = ""


class Watch(_Msg):
    """Subscribe to a job: the server streams Progress, then exactly one terminal event."""

    job_id: str
    client_id: str = ""


class FetchResult(_Msg):
    job_id: str
    index: Annotated[int, msgspec.Meta(ge=0)] = 0
    client_id: str = ""


class FetchPreview(_Msg):
    """The latest low-res preview of a job that asked for previews; answered with a Result."""

    job_id: str
    client_id: str = ""


class Cancel(_Msg):
    job_id: str
    mode: StopMode = StopMode.CANCEL
    client_id: str = ""


class Delete(_Msg):
    """Forget a finished job: its images and record are deleted; answered with its last JobInfo."""

    job_id: str
    client_id: str = ""


class Release(_Msg):
    """Give back a queued job of a stopping server, so the gateway that placed it can place it on
    another: answered with its JobInfo (still queued), after which this server forgets it (its id
    answers "not found" here). A job that has started stays: Rejected."""

    job_id: str
    client_id: str = ""


class ListModels(_Msg):
    """The models and LoRAs a job may name; answered with ModelList."""


class ListJobs(_Msg):
    """The client's unfinished jobs, running first then queued in order; answered with JobList. With
    ``task``: the client's jobs labelled so (GenerationParams.task), finished ones still kept too. With
    ``finished`` N: the client's N most recently finished jobs still kept (memory and disk), newest first."""

    client_id: str = ""
    task: Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)] = ""
    finished: Annotated[int, msgspec.Meta(ge=0, le=MAX_LISTED_JOBS)] = 0


# --- replies and events (model server -> gateway) ------------------------------------------


class LoadStatus(_Shape):
    """What a loading model server is doing: the phase (``LOAD_PHASES``), for how long, and for a
    download the bytes done of the total, the rate and the time left. Kept after a failed load, so
    the failure says how far it got."""

    phase: Annotated[str, msgspec.Meta(max_length=32)]
    detail: Annotated[str, msgspec.Meta(max_length=500)] = ""
    seconds: float = 0.0  # in this phase so far
    bytes_done: int | None = None
    bytes_total: int | None = None
    rate_bytes_per_second: float | None = None
    eta_seconds: float | None = None
    finished: Annotated[dict[str, float], msgspec.Meta(max_length=16)] = {}  # earlier phases -> seconds

    @property
    def percent(self) -> float | None:
        """How much of the download is done, 0-100; None outside a download."""
        return round(100 * (self.bytes_done or 0) / self.bytes_total, 1) if self.bytes_total else None


# The phases a load goes through, in order; a load skips those it does not need.
LOAD_PHASES = ("downloading", "converting", "loading", "quantizing", "compiling")


class StorageStatus(_Shape):
    """The outputs folder as the model server last found it (Pong.storage)."""

    ok: bool = True
    reason: str = ""  # why not ok: the last failed write, or free space under the mark
    errors: int = 0  # failed writes since start
    free_bytes: int | None = None
    min_free_bytes: int = 0  # MIN_FREE_DISK_MB: under it new jobs are refused
    failed_at: float | None = None  # when the last write failed (wall clock), while not ok


class SpeedEntry(_Shape):
    """How fast this host ran one kind of job, measured on the jobs it ran (model_server/jobs/speed.py)."""

    model: str
    preset: str
    mode: str
    width: int
    height: int
    seconds_per_step: float
    seconds_per_image: float = 0.0  # beyond the steps: text encoding, decoding, encoding the file
    steps: int = 0  # the steps the latest measured job ran (per image)
    peak_rss_bytes: int = 0  # the largest resident memory seen while one ran
    jobs: int = 0  # how many were measured
    measured_at: float = 0.0  # wall clock of the latest


class HostInfo(_Shape):
    """The machine a model server's measurements come from (they are kept per host)."""

    cpu: str = ""
    threads: int = 0
    isa: str = ""  # the vector extensions that matter here: avx2, avx512, vnni, bf16, amx
    memory_bytes: int = 0


class BudgetStatus(_Shape):
    """The memory budget a model server keeps (MEMORY_BUDGET) and what it holds between jobs."""

    budget_bytes: int = 0  # 0: none kept
    # where the budget came from (the setting, the cgroup limit, a share of RAM)
    source: Annotated[str, msgspec.Meta(max_length=200)] = ""
    idle_bytes: int = 0  # resident memory between jobs
    # model name -> what loading it added to the resident memory (MAX_RESIDENT_MODELS bounds how many)
    resident: Annotated[dict[str, int], msgspec.Meta(max_length=MAX_RESIDENT_MODELS)] = {}


class Pong(_Msg):
    model: str
    model_state: ModelState
    device: str = "cpu"
    optimizations: dict[str, str | int | float | bool | None] = {}
    queue_depth: int = 0
    queue_capacity: int = 0
    running_job: str | None = None
    rss_bytes: int = 0
    peak_rss_bytes: int = 0
    load_seconds: float | None = None
    uptime_seconds: float = 0.0
    error: ErrorInfo | None = None
    schedulers: list[str] = []
    pid: int = 0
    available_bytes: int | None = None  # memory the machine/container still has
    stats: dict[str, float] = {}  # monotonic counters since start (jobs by outcome, steps, seconds...)
    unavailable_presets: dict[str, str] = {}  # preset name -> why this server cannot run it
    load: LoadStatus | None = None  # while loading, and after a failed load
    # 8 hex digits, new at every start, that begin the ids of the jobs this server creates: how a
    # gateway in front of many servers finds a job's server ("" from a server before scale-out).
    server_id: Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{8})?$")] = ""
    max_queued_per_client: int = 0  # the per-client queue cap (0: none); a gateway sums it over servers
    # The model in memory now and the default one (ModelEntry names): among servers equally busy, a job
    # goes where its model is loaded, so fewer jobs wait for a switch.
    loaded_model: str = ""
    default_model: str = ""
    storage: StorageStatus | None = None  # None: OUTPUTS_DIR is off (results in memory only)
    speeds: Annotated[list[SpeedEntry], msgspec.Meta(max_length=256)] = []  # what GET /v1/capabilities shows
    memory_budget: BudgetStatus | None = None
    host: HostInfo | None = None


class ModelEntry(_Shape):
    """One model a job may name (GenerationParams.model)."""

    name: str
    kind: Literal["hub", "folder", "single_file", "tiny"]
    source: str = ""  # a hub id, or the folder's or file's name (never a path)
    default: bool = False
    loaded: bool = False  # the one in memory now: a job naming another loads it first
    one_step: bool = False  # distilled for 1-4 steps without guidance (SD-Turbo, SDXS): the turbo preset
    unavailable_presets: dict[str, str] = {}  # preset -> why this model cannot run it
    hash: str = ""  # A1111's short hash (sha256, 10 hex) of a single-file checkpoint, once computed
    family: str = "sd1"  # sd1 | sd2 | sdxl (model_server/families): its text encoders, sizes and parts
    default_width: int = 0  # the size a request naming it gets when it gives none (0: DEFAULT_SIZE)
    default_height: int = 0
    sizes: list[str] = []  # "WxH": the sizes it was trained at, within this deployment's bounds


class UpscalerEntry(_Shape):
    """One upscaler a job may name (upscale jobs, the hires fix): a built-in or a model file in UPSCALER_DIR."""

    name: str
    kind: Literal["builtin", "latent", "model"]
    scale: float = 0.0  # a model's own factor (from its name until loaded, then its weights); 0 for any
    file: str = ""  # a model's file name in UPSCALER_DIR
    size_bytes: int = 0
    architecture: str = ""  # as the library detected it, once loaded (ESRGAN, SPAN, ...)


class FaceRestorerEntry(_Shape):
    """One face restoration model a job may name: a file in FACE_RESTORER_DIR."""

    name: str
    file: str
    size_bytes: int = 0
    architecture: str = ""  # as the library detected it, once loaded (GFPGAN, RestoreFormer)


class LoraEntry(_Shape):
    name: str
    file: str  # the file's name in LORA_DIR
    size_bytes: int = 0
    hash: str = ""  # A1111's short hash (12 hex) once the LoRA has been loaded
    loaded: bool = False  # in memory now (kept under LORA_CACHE_MB)


class ControlNetEntry(_Shape):
    """One model a control unit may name: a ControlNet's folder or an IP-Adapter's file in CONTROLNET_DIR."""

    name: str
    file: str  # the folder's or file's name in CONTROLNET_DIR
    family: str = ""  # the model family it steers (sd1, sd2, sdxl), "" until known
    size_bytes: int = 0
    loaded: bool = False
    kind: str = "controlnet"  # controlnet | ip-adapter (its units' module: ip-adapter)


class ModelList(_Msg):
    models: list[ModelEntry] = []
    controlnets: list[ControlNetEntry] = []
    annotator_modules: list[str] = []  # the preprocessors needing an annotator model that this server has
    loras: list[LoraEntry] = []
    upscalers: list[UpscalerEntry] = []
    face_restorers: list[FaceRestorerEntry] = []
    face_detector: str = ""  # the detector's file in FACE_RESTORER_DIR; "" = none, so no face restoration


class Accepted(_Msg):
    job: JobView


class JobInfo(_Msg):
    job: JobView


class Progress(_Msg):
    job: JobView


class Completed(_Msg):
    job: JobView


class Failed(_Msg):
    job: JobView


class Cancelled(_Msg):
    job: JobView


class JobList(_Msg):
    jobs: list[JobView] = []
    # Each job's owner (client_id), in the same order, only for a listing asked with client_id ""
    # (gateways, and admin keys): what a gateway needs to answer for the jobs of a server it lost.
    owners: list[str] = []


class Result(_Msg):
    """Metadata of one image; the encoded image bytes travel in the next frame."""

    job_id: str
    image: ImageInfo


class Working(_Msg):
    """The request is still being worked on (a Submit's uploads being decoded): sent once per
    heartbeat until the reply, so the sender's deadline measures silence, not work."""


class Rejected(_Msg):
    """A request the server would not carry out (unknown job, queue full, not ready...)."""

    error: ErrorInfo


Request = Union[Ping, Submit, GetJob, Watch, FetchResult, Cancel, FetchPreview, ListJobs, Delete, Release,
                ListModels]
Reply = Union[Pong, Accepted, JobInfo, Progress, Completed, Failed, Cancelled, Result, Rejected, JobList, Working,
              ModelList]
TERMINAL_EVENTS = (Completed, Failed, Cancelled)


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Carries one message and the sender's correlation number, echoed in every reply."""

    ref: int
    body: Union[Request, Reply]


__all__ = [name for name in dir() if not name.startswith("_") and name[0].isupper()]
