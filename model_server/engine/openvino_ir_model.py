"""A model published as OpenVINO IR only, run with no torch weights and no conversion.

The OpenVINO organisation publishes Stable Diffusion ready to run, int8 included (``OpenVINO/stable-diffusion-
v1-5-int8-ov``, ``...-fp16-ov``, SDXL's too), in optimum-intel's layout: each part an IR in its folder with its
config (openvino_ir_export writes the same layout from a diffusers pipeline; it says the inputs and outputs).
Why it matters: an 8 GB machine cannot make an int8 model itself (calibration peaks at 9-10 GiB,
docs/performance.md), and here downloads one and runs it at once. The family's diffusers pipeline is assembled
over OpenVINO parts: the UNet (openvino_unet), the VAE's decoder and encoder (openvino_vae) and the text
encoders (below), each compiled static for the shapes a job needs. The schedulers, the denoising loop, progress,
previews, cancel, prompt weighting, image-to-image, inpainting and the hires fix are diffusers' and ours as for
any model; what needs torch weights (LoRAs, step caching, token merging, seamless tiling, ControlNet,
IP-Adapter, the fast preset's LCM-LoRA, sizes not multiples of 64) is refused at submit (plan.needs_torch).

The torch modules the pipelines read their configuration from are made on the meta device: no memory, no
weights.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPTextModelOutput

from model_server.engine.openvino_compiled import StaticIR
from model_server.engine.vae_tiles import TILE_PIXELS
from model_server.families import Family
from model_server.families.detect import IR_FILE
from model_server.loading.progress import LoadProgress
from model_server.pipeline import load_error


class OpenVinoTextEncoder(torch.nn.Module):
    """A CLIP text encoder (with or without projection) as the pipelines call it, on its compiled IR: the
    outputs by the names optimum-intel exports (``text_embeds`` or ``last_hidden_state`` first, SDXL's
    ``hidden_states.N``)."""

    def __init__(self, ir: Path, config, precision: str, threads: int):
        super().__init__()
        self.config = config
        self._ir = StaticIR(ir, precision, threads)
        self._hidden = sorted((name for name in self._ir.outputs if name.startswith("hidden_states.")),
                              key=lambda name: int(name.rsplit(".", 1)[1]))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def compile_for(self, tokens: int) -> None:
        self._ir.compile_for({"input_ids": [1, tokens]})

    def forward(self, input_ids: torch.Tensor, attention_mask=None, output_hidden_states: bool | None = None,
                return_dict: bool = True, **kwargs):
        out = {name: torch.from_numpy(value) for name, value in
               zip(self._ir.outputs, self._ir.infer_all({"input_ids": input_ids.numpy()}))}
        if output_hidden_states and not self._hidden:
            raise ValueError("this text encoder's IR gives no hidden states (re-export it with them)")
        hidden = tuple(out[name] for name in self._hidden) if output_hidden_states else None
        if "text_embeds" in out:
            return CLIPTextModelOutput(text_embeds=out["text_embeds"], last_hidden_state=out["last_hidden_state"],
                                       hidden_states=hidden)
        return BaseModelOutputWithPooling(last_hidden_state=out["last_hidden_state"],
                                          pooler_output=out.get("pooler_output"), hidden_states=hidden)


def _json(folder: Path, name: str) -> dict:
    try:
        config = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise load_error(f"{name} of the OpenVINO model is missing or unreadable: {type(exc).__name__}",
                         "A model in optimum-intel's OpenVINO layout has model_index.json, a config.json beside "
                         "each part's IR and scheduler/scheduler_config.json: download the whole repository.") \
            from None
    if not isinstance(config, dict):
        raise load_error(f"{name} of the OpenVINO model is not a JSON object", "Download the model again.")
    return config


def _shell(kind, config: dict):
    """A diffusers model of ``config`` on the meta device: what the pipelines read (its full config, with the
    defaults its file leaves out), no weights."""
    with torch.device("meta"):
        return kind.from_config(kind.extract_init_dict(config)[0])


def load(folder: Path, family: Family, precision: str, threads: int, progress: LoadProgress, side: int,
         tile_above: int = 0):
    """(the family's text-to-image pipeline over the OpenVINO parts in ``folder``, what /health shows); the VAE
    decoder compiled for ``side``, or for its tiles when that is over ``tile_above`` (SD_VAE_TILE_ABOVE)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTokenizer

    from model_server.engine.openvino_unet import OpenVinoUNet, load_batch
    from model_server.engine.openvino_vae import OpenVinoVae

    index = _json(folder, "model_index.json")
    unet_like = _shell(diffusers.UNet2DConditionModel, _json(folder, "unet/config.json"))
    progress.start("compiling", f"the OpenVINO UNet for {side}x{side}")
    try:
        unet = OpenVinoUNet(folder / "unet", unet_like, precision, threads, file=IR_FILE)
    except ValueError as exc:  # its config and its IR disagree
        raise load_error(f"the OpenVINO model's UNet: {exc}", "Download or export the model again.") from None
    missing = set(unet.ir.inputs) - {"sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids",
                                     "timestep_cond"}
    if missing:
        raise load_error(f"the OpenVINO UNet takes inputs this server does not give: {', '.join(sorted(missing))}",
                         "Use a Stable Diffusion 1.x/2.x or SDXL model, or an LCM-distilled one.")
    unet.compile_for((load_batch(unet_like.config), unet_like.config.in_channels, side // 8, side // 8))
    vae_like = _shell(diffusers.AutoencoderKL, _json(folder, "vae_decoder/config.json"))
    encoder = folder / "vae_encoder" / IR_FILE
    if not encoder.is_file():
        raise load_error("the OpenVINO model has no vae_encoder/ (image-to-image and inpainting need it)",
                         "Download the model's vae_encoder folder too.")
    vae = OpenVinoVae(folder / "vae_decoder" / IR_FILE, vae_like, precision, threads, encoder=encoder)
    progress.start("compiling", f"the OpenVINO VAE decoder for {side}x{side} and the text encoders")
    decoded = TILE_PIXELS if tile_above and side > tile_above else side
    vae.compile_for(decoded, decoded)
    parts = {"unet": unet, "vae": vae, "scheduler": _scheduler(folder, index)}
    for encoder_name, tokenizer_name in zip(family.text_encoders, ("tokenizer", "tokenizer_2")):
        encoder = OpenVinoTextEncoder(folder / encoder_name / IR_FILE,
                                      CLIPTextConfig.from_pretrained(folder / encoder_name), precision, threads)
        tokenizer = CLIPTokenizer.from_pretrained(folder / tokenizer_name)
        encoder.compile_for(tokenizer.model_max_length)
        parts.update({encoder_name: encoder, tokenizer_name: tokenizer})
    kind = getattr(diffusers, family.pipelines["txt2img"])
    takes = inspect.signature(kind.__init__).parameters
    extra = {key: index[key] for key in ("force_zeros_for_empty_prompt",) if key in index and key in takes}
    if "safety_checker" in takes:
        extra.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = kind(**parts, **extra)
    pipe.set_progress_bar_config(disable=True)
    weights = sum(f.stat().st_size for f in folder.glob(f"*/{Path(IR_FILE).stem}.bin"))
    int8 = _int8(unet.ir.model)
    return pipe, {"weights": "OpenVINO IR (no torch weights)", "weights_mb": round(weights / 2**20, 1),
                  "backend": "openvino", "backend_reason": "the model is OpenVINO IR only",
                  "openvino_precision": precision, "openvino_vae": "decode and encode",
                  "openvino_text_encoders": "yes", **({"openvino_int8": int8} if int8 else {}),
                  "openvino_runs_on_torch": "nothing: LoRAs, deep_cache, token_merging, tiling, ControlNet, "
                                            "IP-Adapter and the fast preset need torch weights, which this model "
                                            "does not have"}


def _scheduler(folder: Path, index: dict):
    """The scheduler the model ships (its class named in its config or model_index.json; PNDM, SD's, if neither
    names one diffusers has)."""
    import diffusers

    config = _json(folder, "scheduler/scheduler_config.json")
    named = config.get("_class_name") or (index.get("scheduler") or [None, None])[-1]
    kind = getattr(diffusers, str(named), None)
    if not (isinstance(kind, type) and issubclass(kind, diffusers.SchedulerMixin)):
        kind = diffusers.PNDMScheduler
    return kind.from_config(config)


def _int8(model) -> str:
    """How the UNet's IR is quantized, as SD_INT8 names it: "hybrid" when activations are quantized too
    (FakeQuantize, as the published int8 models), "weights" when only weights are int8, "" when neither."""
    types = {op.get_type_name() for op in model.get_ops()}
    if "FakeQuantize" in types:
        return "hybrid"
    constants = (op for op in model.get_ops() if op.get_type_name() == "Constant")
    return "weights" if any(c.get_element_type().get_type_name() in ("i8", "u8") for c in constants) else ""
