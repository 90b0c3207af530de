"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, conditioned on its last hidden states,
trained at 512² (SD 2.x-768 at 768², read from the model's own config by the engine).
SD-Turbo and SDXS are its one-step kin."""

from __future__ import annotations

from model_server.families.base import Family

_SIZES = ((512, 512), (512, 768), (768, 512), (448, 640), (640, 448), (384, 640), (640, 384))
_PIPELINES = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
              "inpaint": "StableDiffusionInpaintPipeline"}
_CONTROL = {"txt2img": "StableDiffusionControlNetPipeline", "img2img": "StableDiffusionControlNetImg2ImgPipeline",
            "inpaint": "StableDiffusionControlNetInpaintPipeline"}

SD1 = Family(
    name="sd1", title="Stable Diffusion 1.x", text_encoders=("text_encoder",),
    conditioning="CLIP ViT-L/14 hidden states", trained_sizes=_SIZES, one_step_size=512, pipelines=_PIPELINES,
    control_pipelines=_CONTROL,
    lcm_lora="latent-consistency/lcm-lora-sdv1-5", tiny_vae="madebyollin/taesd",
    latent_rgb=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    resident_bytes=int(2.3 * 2**30), weights_bytes=2 * 1_066_000_000,  # UNet 860M, VAE 84M, CLIP ViT-L 123M
)

# The same pipeline classes and parts; OpenCLIP ViT-H text encoder. No LCM-LoRA was published for it, so the
# fast preset is refused with that reason (the turbo preset serves SD-Turbo).
SD2 = Family(
    name="sd2", title="Stable Diffusion 2.x", text_encoders=("text_encoder",),
    conditioning="OpenCLIP ViT-H/14 hidden states", trained_sizes=_SIZES, one_step_size=512, pipelines=_PIPELINES,
    control_pipelines=_CONTROL,
    lcm_lora="", tiny_vae="madebyollin/taesd", latent_rgb=SD1.latent_rgb,
    # SD 1.x's with the larger text encoder (OpenCLIP ViT-H, 340M against 123M)
    resident_bytes=int(2.7 * 2**30), weights_bytes=2 * 1_289_000_000,
)
