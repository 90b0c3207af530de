"""The model server's configuration: one frozen object, each field declared with its variable and
doc (``common.env``), built from the environment here only. ``docs/configuration.md`` is
generated from these declarations (``python -m common.reference``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from common.env import Env, load, setting, truth
from common.limits import RequestLimits
from common.curve import CurveKeys
from model_server import budget
from model_server.models.catalog import parse_list
from model_server.webhooks.signing import secret_bytes
from protocol.messages import MAX_RESIDENT_MODELS
from protocol.transport import check_bind, default_address, expand

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"


def read_token(env: Env, name: str = "HF_TOKEN") -> str | None:
    """The Hugging Face token: HF_TOKEN, its alias HF_AUTH_TOKEN, or a file (Docker secrets)."""
    for var in ("HF_TOKEN", "HF_AUTH_TOKEN"):
        value = env.get(var, "").strip()
        if value:
            return value
    path = env.get("HF_TOKEN_FILE", "").strip()
    if path:
        text = Path(path).read_text(encoding="utf-8").strip()
        return text or None
    return None


def _lower(env: Env, name: str) -> str | None:
    return env.get(name, "").strip().lower() or None


def _or_none(env: Env, name: str) -> str | None:
    """Set but empty means "none" (the part is switched off)."""
    return None if name not in env else env[name].strip() or "none"


def _auto_or_bool(env: Env, name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    return None if raw in ("", "auto") else truth(name, raw)


def _bind(env: Env, name: str) -> str:
    return expand(env.get(name, "").strip()) or default_address(env)


def _seconds_list(env: Env, name: str) -> tuple[float, ...] | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        waits = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{name} must be seconds separated by commas, got {raw!r}") from None
    if not waits or any(not 0 < w <= 7 * 86400 for w in waits):
        raise ValueError(f"{name}: each wait must be more than 0 and at most a week, got {raw!r}")
    return waits


@dataclasses.dataclass(frozen=True)
class ModelServerSettings(RequestLimits):
    """The model server's settings (the request limits included), each read from its variable."""

    bind: str = setting(
        "MODEL_SERVER_BIND", "The ZeroMQ ROUTER address. The protocol has no auth of its own, so the default is a "
        "Unix socket in a directory only this user can enter (mode 0700); `tcp://127.0.0.1:PORT` when asked for. "
        "`{hostname}` is replaced by the host's name: `ipc:///run/sd-cpu/servers/{hostname}.sock` gives each "
        "compose replica its own socket, found by gateways with `ipc-dir:///run/sd-cpu/servers`",
        default_factory=default_address, read=_bind,
        shown="`ipc://$XDG_RUNTIME_DIR/sd-cpu/model.sock` (else in `/tmp/sd-cpu-$UID/`)")
    curve_secret_key: str = setting(
        "MODEL_SERVER_CURVE_SECRET_KEY", "CurveZMQ: this server's key pair (a `zmq.auth` `.key_secret` file; "
        "`python -m common.curve DIR` makes a set). With it, only gateways whose public key is in "
        "`MODEL_SERVER_CURVE_CLIENTS_DIR` get an answer, over an encrypted link; needed for a TCP bind other "
        "machines can reach", "", shown="none (no CURVE)")
    curve_clients_dir: str = setting("MODEL_SERVER_CURVE_CLIENTS_DIR", "CurveZMQ: the directory of the public keys "
                                     "(`*.key`) of the gateways allowed in", "", shown="none")
    allow_remote: bool = setting("MODEL_SERVER_ALLOW_REMOTE", "Allow a TCP bind other machines could reach (only "
                                 "on a network you trust)", False)
    pipeline: str = setting("MODEL_SERVER_PIPELINE", "`fake`: a torch-free stand-in, for tests and smoke runs",
                            "diffusers", read=_lower)
    model: str = setting("SD_MODEL", "The default model: hub id, local diffusers directory, single-file `.safetensors` "
                         "checkpoint (SD 1.x/2.x or SDXL), a model published as OpenVINO IR (optimum-intel's layout, "
                         "e.g. `OpenVINO/stable-diffusion-v1-5-int8-ov`: int8, no conversion), "
                         "or `tiny` / `tiny-turbo` / `tiny-sdxl` / `tiny-sdxl-turbo` "
                         "(tiny random-weight models of those families' exact shapes, written to `SD_CACHE_DIR`, no "
                         "network)", DEFAULT_MODEL)
    models: str = setting(
        "SD_MODELS", "More models a request may name (`model`), besides `SD_MODEL`: a comma-separated list of hub "
        "ids, diffusers directories and single-file `.safetensors` checkpoints, each optionally `NAME=SOURCE`. One "
        "model is in memory at a time: a job naming another loads it first", "", shown="none")
    models_dir: str = setting(
        "SD_MODELS_DIR", "A folder of models a request may name: each diffusers directory in it (with "
        "`model_index.json`) and each single-file `.safetensors` checkpoint, named for the folder or file. Looked "
        "at again whenever it changes", "", shown="none")
    single_file_config: str = setting(
        "SD_SINGLE_FILE_CONFIG", "The component configs for single-file checkpoints (which carry weights only): "
        "`auto` lets diffusers pick them by the checkpoint's architecture (SD 1.x, 2.x, SDXL; fetched from the hub "
        "once, or read from its cache), or a hub id or diffusers directory of the same architecture, or one per "
        "family: `sd1=DIR,sdxl=DIR` (a family not named: `auto`). A single file is converted once, in a child "
        "process, to a diffusers copy under `SD_CACHE_DIR/checkpoints`", "auto")
    lora_dir: str = setting(
        "LORA_DIR", "A folder of LoRA `.safetensors` files (kohya/A1111 or diffusers format) that requests may "
        "apply (`loras`, or `<lora:NAME:WEIGHT>` in the prompt), named for the file", "", shown="none")
    max_resident_models: int = setting(
        "MAX_RESIDENT_MODELS", "Models kept in memory at once (`SD_MODELS`): a job naming one still loaded runs "
        "without reloading it. A model stays only while the memory budget (`MEMORY_BUDGET`) says the next one and "
        "its job fit beside it; the least recently used goes first. 1: one model at a time", 3)
    lora_cache_mb: int = setting(
        "LORA_CACHE_MB", "Memory for LoRAs kept loaded between jobs; the least recently used are dropped first "
        "(a job's own LoRAs always load)", 512)
    upscaler_dir: str = setting(
        "UPSCALER_DIR", "A folder of upscaler models (`.pth` or `.safetensors`: ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, "
        "SPAN and the other architectures spandrel reads) for upscale jobs and the hires fix, named for the file; "
        "Lanczos, Nearest and the latent upscalers need none", "", shown="none")
    upscale_tile: int = setting(
        "UPSCALE_TILE", "The side in pixels of the tiles an upscaler model runs in: its memory is one tile's "
        "activations whatever the image's size (256: about 0.5 GiB for a 4x ESRGAN)", 256)
    controlnet_dir: str = setting(
        "CONTROLNET_DIR", "A folder of ControlNets and IP-Adapters that control units may name (`controls`, "
        "A1111's ControlNet API): ControlNets as diffusers folders (`config.json` and "
        "`diffusion_pytorch_model.safetensors`), named for the folder, or single `.safetensors` files as A1111 keeps "
        "them, named for the file; IP-Adapters as `.safetensors` files with their "
        "`image_encoder` folder beside them (h94/IP-Adapter's layout), named for the file; each for the model family "
        "it was trained with (SD 1.x, 2.x or SDXL)", "", shown="none")
    annotator_dir: str = setting(
        "ANNOTATOR_DIR", "A folder of annotator models for the control preprocessors that need one (depth, line art, "
        "soft edges, M-LSD lines, OpenPose's body, NormalBAE normals): the `.pth` files as lllyasviel/Annotators "
        "publishes them (`sk_model.pth`, `ControlNetHED.pth`, ...; A1111's `annotator/downloads` folder works as it "
        "is) and depth models as transformers folders (Depth-Anything-V2-Small-hf, dpt-hybrid-midas); never "
        "downloaded at job time: `python -m model_server fetch --annotators` fills it", "", shown="none")
    face_restorer_dir: str = setting(
        "FACE_RESTORER_DIR", "A folder of face restoration models (`.pth` or `.safetensors`: GFPGAN v1.3/v1.4, "
        "RestoreFormer), named for the file, and the face detector they need: facexlib's "
        "`detection_Resnet50_Final.pth` (or `detection_mobilenet0.25_Final.pth`), as A1111 keeps them in "
        "`models/GFPGAN`", "", shown="none")
    revision: str | None = setting("SD_MODEL_REVISION", "Hub revision (branch, tag or commit)", None)
    token: str | None = setting(
        "HF_TOKEN", "Hugging Face token (or `HF_AUTH_TOKEN`, or `HF_TOKEN_FILE` naming a file that holds it). It "
        "never appears in logs, errors or `/health`.", None, read=read_token, secret=True)
    cache_dir: str = setting("SD_CACHE_DIR", "Where the bf16 copy and `SD_MODEL=tiny` are written",
                             str(Path.home() / ".cache" / "sd-cpu"), shown="`~/.cache/sd-cpu`")
    dtype: str = setting(
        "SD_DTYPE", "`auto` uses bfloat16 where the CPU has native bf16 (`amx_bf16`/`avx512_bf16`, and "
        "`ONEDNN_MAX_CPU_ISA` allows it), float32 elsewhere; or `float32`, `bfloat16`", "auto", read=_lower)
    backend: str = setting(
        "SD_BACKEND", "What runs the UNet and VAE decoder: `openvino` (the OpenVINO runtime; converted once, in a "
        "child process, to `SD_CACHE_DIR/openvino`; the `fast` preset's UNet with its LCM-LoRA fused, on the first "
        "fast job), `torch`, or `auto`: OpenVINO where it was measured to pay (bf16, on CPUs with native bf16, and "
        "for a UNet of a billion parameters or more, which keeps int8 weights there: SDXL in float32), torch "
        "elsewhere. Requests OpenVINO cannot run (LoRAs, `deep_cache`, `token_merging`, an inpainting "
        "checkpoint) run on torch", "auto", read=_lower)
    int8: str = setting(
        "SD_INT8", "int8 on the CPU's integer units for the OpenVINO UNet: `hybrid` (convolutions W8A8, matmul weights "
        "int8) or `full` (all W8A8), quantized once with NNCF on calibration prompts (SD 1.x/2.x); `weights` (the "
        "matmuls' weights int8, data-free, any family; convolutions stay bf16: the CPU plugin would decompress them to "
        "float32); `none`; or `auto`: `weights` for a UNet of a billion parameters or more when OpenVINO runs it "
        "(SDXL: its 1024x1024 peak under 6.5 GiB, as optimum-intel's exporter compresses such models by default), "
        "`none` for smaller ones (SD 1.x/2.x) and on torch. With any mode a ControlNet job's UNet and ControlNets, "
        "and the `fast` preset's UNet, keep int8 weights too (data-free). Drift is measured on random weights only "
        "(docs/performance.md)",
        "auto", read=_lower)
    attention: str = setting("SD_ATTENTION", "`sliced` turns on attention slicing (slower on CPU; experiments "
                             "only)", "sdpa", read=_lower)
    threads: int = setting("SD_THREADS", "torch intra-op threads; 0 = the physical cores this process may use "
                           "(affinity and cgroup quota respected)", 0)
    safety_checker: bool = setting("SD_SAFETY_CHECKER", "Load the model's safety checker (about 1.2 GB of RAM; "
                                   "it can blank images after minutes of work)", False)
    prepare_ahead: bool = setting(
        "SD_PREPARE_AHEAD", "In idle time after the load, make the one-time conversions a later job may need (the "
        "fast preset's OpenVINO UNet with the LCM-LoRA fused in, about a minute), in a child process that is "
        "stopped the moment a job arrives (and resumed in the next idle time); `false`: on the first job that "
        "needs them", True)
    bf16_cache: bool = setting(
        "SD_BF16_CACHE", "With bf16, convert the model once, in a child process, to a bf16 copy under "
        "`SD_CACHE_DIR/bf16`, and map that: the server never holds fp32 and bf16 weights at once", True)
    channels_last: bool | None = setting(
        "SD_CHANNELS_LAST", "NHWC layout for UNet and VAE convolutions: `auto` where it was measured to pay (AMX "
        "CPUs); `true`/`false` force it", None, read=_auto_or_bool, shown="`auto`")
    release_idle_weights: str = setting(
        "SD_RELEASE_IDLE_WEIGHTS", "Drop mapped weights from resident memory after their phase of each job: "
        "`text_encoder`, `all` (also the UNet before the VAE decode) or `none`", "all", read=_lower)
    lcm_lora: str = setting(
        "SD_LCM_LORA", "The `fast` preset's LCM-LoRA: hub id or directory; `auto` (the model family's: SD v1's, "
        "SDXL's; for the tiny models a locally made one); `none` turns the preset off. Attached on the first fast "
        "job.", "auto", read=_or_none)
    tiny_vae: str = setting("SD_TINY_VAE", "The `fast` and `turbo` presets' decoder: hub id or directory; `auto` "
                            "(the family's: `madebyollin/taesd`, `madebyollin/taesdxl`); `none` decodes with the "
                            "full VAE", "auto", read=_or_none)
    vae_tile_above: int = setting(
        "SD_VAE_TILE_ABOVE", "Decode and encode with the full torch VAE in overlapping 512-pixel tiles when an image "
        "has more pixels than this side squared (SDXL's 1024x1024 and up, by default), so its activations stay "
        "small: 1.5 GiB less at 1024x1024 for about 7 s more (docs/performance.md); 0: never tile", 768)
    inpaint_model: str = setting(
        "SD_INPAINT_MODEL", "An inpainting checkpoint (9-channel UNet, e.g. "
        "`stable-diffusion-v1-5/stable-diffusion-inpainting`): hub id or directory. Its UNet loads on the first "
        "inpaint job and works beside the model's text encoder and VAE; `tiny` makes a local one for tests; "
        "`none` inpaints with the model itself (masked latent blending)", "none", read=_or_none)
    download_free_margin_mb: int = setting(
        "SD_DOWNLOAD_FREE_MARGIN_MB", "Free disk space a download must leave behind: before fetching, the hub's "
        "file sizes plus this are checked against the free space, and the load refuses (saying how much is needed) "
        "rather than failing half-way", 1024)
    queue_size: int = setting("MODEL_SERVER_QUEUE_SIZE", "Queued jobs before submissions get `429 queue_full`", 16)
    result_ttl_seconds: float = setting(
        "RESULT_TTL_SECONDS", "How long a finished job's images and record are kept, in memory and on disk; then "
        "they are deleted and the job answers 410", 86400.0)
    result_budget_bytes: int = setting("RESULT_BUDGET_BYTES", "Memory for kept images (oldest first out; those on "
                                       "disk stay fetchable)", 256 * 1024 * 1024)
    heartbeat_seconds: float = setting("MODEL_SERVER_HEARTBEAT_SECONDS", "How often watchers hear from a job, even "
                                       "when nothing changed", 1.0)
    shutdown_grace_seconds: float = setting(
        "SHUTDOWN_GRACE_SECONDS", "After SIGTERM, how long the running job may finish before it is stopped with a "
        "retryable `shutting_down`; queued jobs fail so at once, and the process exits 0", 5.0)
    fake_step_seconds: float = setting("FAKE_STEP_SECONDS", "Step time of the fake pipeline", 0.01)
    max_queued_per_client: int = setting("MAX_QUEUED_PER_CLIENT", "Queued jobs one client (API key or address) may "
                                         "have; 0 = no cap", 4)
    min_free_memory_mb: int = setting(
        "MIN_FREE_MEMORY_MB", "Refuse new jobs (`503 out_of_memory`, retryable) while the machine or container has "
        "less free memory than this; 0 = off", 0)
    memory_budget: str = setting(
        "MEMORY_BUDGET", "The resident memory this server's jobs may reach at their peak: a size (`6GiB`, `6144MB`), "
        "a share of RAM (`80%`), `off`, or `auto`: 90% of the cgroup memory limit when one is set (a container's "
        "`--memory`, a Kubernetes limit), else 85% of RAM. Each job's peak is predicted at submit (its model, size, "
        "hires fix, control units, upscaler; measured on this machine as jobs run) and a job over the budget is "
        "refused (`422 over_memory_budget`) naming what to lower; `/health` shows it. With several model servers "
        "on one machine, give each its share", "auto", read=lambda env, name: env.get(name, "").strip() or None)
    outputs_dir: str = setting(
        "OUTPUTS_DIR", "Where finished images and a record per job are written; jobs unfinished at a crash are "
        "reported failed (`model_server_lost`, retryable) after a restart. Empty keeps results in memory only. "
        "`{hostname}` in its last part (e.g. `/outputs/{hostname}`) gives each replica its own folder on shared "
        "storage, and each replica then also answers for the finished jobs in its peers' folders, so their images "
        "outlive a lost replica",
        "", read=lambda env, name: env.get(name, "outputs").strip(), shown="`outputs`")
    max_upload_pixels: int = setting("MAX_UPLOAD_PIXELS", "An init image's pixel count, checked from its header "
                                     "before it is decoded (a decompression bomb never gets its buffer)", 4096 * 4096)
    outputs_budget_bytes: int = setting("OUTPUTS_BUDGET_BYTES", "Disk budget for outputs; the oldest are deleted "
                                        "first", 2 * 1024**3)
    min_free_disk_mb: int = setting(
        "MIN_FREE_DISK_MB", "Refuse new jobs (`503 disk_full`, retryable) while the disk holding OUTPUTS_DIR has less "
        "free space than this, before it is full; 0 = off. A write that fails anyway keeps the job's images in "
        "memory and turns `/health` to `degraded`", 100)

    webhook_secret: str = setting(
        "WEBHOOK_SECRET", "Signs every webhook (Standard Webhooks: `whsec_` and the base64 of at least 24 random "
        "bytes; receivers verify with it). Needed when WEBHOOK_ALLOWED_HOSTS is set", "", secret=True,
        shown="none")
    webhook_retry_seconds: tuple[float, ...] = setting(
        "WEBHOOK_RETRY_SECONDS", "Waits between a webhook's attempts, comma-separated: one attempt at once, then one "
        "after each wait (kept across restarts); after the last the delivery is `failed`",
        (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0), read=_seconds_list,
        shown="`5,300,1800,7200,18000,36000,36000` (about 27 hours)")
    webhook_timeout_seconds: float = setting("WEBHOOK_TIMEOUT_SECONDS", "One webhook attempt's time, connect to "
                                             "answer", 10.0)

    @property
    def outputs_folder(self) -> str:
        return expand(self.outputs_dir)

    @property
    def outputs_peers(self) -> str | None:
        """The folder holding every replica's outputs folder, when OUTPUTS_DIR names one per replica."""
        path = Path(self.outputs_dir)
        return str(path.parent) if "{hostname}" in path.name else None

    @property
    def curve(self) -> CurveKeys | None:
        if not self.curve_secret_key:
            return None
        return CurveKeys.for_server(self.curve_secret_key, self.curve_clients_dir)

    @classmethod
    def from_env(cls, env: Env | None = None) -> "ModelServerSettings":
        return load(cls, os.environ if env is None else env).validated()

    def validated(self) -> "ModelServerSettings":
        if self.pipeline not in ("diffusers", "fake"):
            raise ValueError(f"MODEL_SERVER_PIPELINE must be diffusers or fake, got {self.pipeline!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"SD_DTYPE must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.backend not in ("auto", "torch", "openvino"):
            raise ValueError(f"SD_BACKEND must be auto, torch or openvino, got {self.backend!r}")
        if self.int8 not in ("auto", "none", "hybrid", "full", "weights"):
            raise ValueError(f"SD_INT8 must be auto, none, hybrid, full or weights, got {self.int8!r}")
        if self.int8 not in ("none", "auto") and self.backend == "torch":
            raise ValueError("SD_INT8 runs on the OpenVINO UNet: set SD_BACKEND to openvino or auto, or SD_INT8=none")
        if self.attention not in ("sdpa", "sliced"):
            raise ValueError(f"SD_ATTENTION must be sdpa or sliced, got {self.attention!r}")
        if self.release_idle_weights not in ("text_encoder", "all", "none"):
            raise ValueError("SD_RELEASE_IDLE_WEIGHTS must be text_encoder, all or none, "
                             f"got {self.release_idle_weights!r}")
        if bool(self.curve_secret_key) != bool(self.curve_clients_dir):
            raise ValueError("CurveZMQ needs both MODEL_SERVER_CURVE_SECRET_KEY and MODEL_SERVER_CURVE_CLIENTS_DIR")
        self.curve  # noqa: B018  (reads the keys now: a wrong path stops the start, not the first request)
        check_bind(self.bind, self.allow_remote, authenticated=bool(self.curve_secret_key))
        parse_list(self.models)  # a pickle checkpoint in SD_MODELS stops the start, saying why
        if not 64 <= self.upscale_tile <= 2048:
            raise ValueError("UPSCALE_TILE must be 64-2048")
        if not 1 <= self.max_resident_models <= MAX_RESIDENT_MODELS:
            raise ValueError(f"MAX_RESIDENT_MODELS must be 1-{MAX_RESIDENT_MODELS}")
        if self.lora_cache_mb < 0:
            raise ValueError("LORA_CACHE_MB must be 0 or more")
        if self.min_free_disk_mb < 0:
            raise ValueError("MIN_FREE_DISK_MB must be 0 or more")
        if self.webhook_hosts.enabled:
            secret_bytes(self.webhook_secret)  # none, or not a secret: stops the start, saying how to make one
        if self.webhook_timeout_seconds <= 0:
            raise ValueError("WEBHOOK_TIMEOUT_SECONDS must be more than 0")
        budget.parse(self.memory_budget)
        if self.queue_size < 1:
            raise ValueError("MODEL_SERVER_QUEUE_SIZE must be at least 1")
        self.limits  # noqa: B018  (checks the bounds against the protocol's)
        return self
