"""SDXL 1.0 and its distilled kin (SDXL-Turbo, Lightning and Hyper-SD UNets, SSD-1B, Segmind-Vega):
two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG, hidden states concatenated), the bigG's pooled
embedding and the size/crop micro-conditioning added to the timestep embedding. Trained at about
one megapixel in the aspect buckets below; SDXL-Turbo at 512².
On OpenVINO its UNet takes the pooled embedding and the size/crop ids as two more inputs
(openvino_convert, openvino_unet)."""

from __future__ import annotations

from model_server.families.base import Family

SDXL = Family(
    name="sdxl", title="SDXL", text_encoders=("text_encoder", "text_encoder_2"),
    conditioning="CLIP ViT-L + OpenCLIP ViT-bigG hidden states, bigG pooled embedding, size and crop ids",
    # SDXL's aspect buckets as Stability's report lists the common ones.
    trained_sizes=((1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
                   (1536, 640), (640, 1536)),
    one_step_size=512,
    pipelines={"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
               "inpaint": "StableDiffusionXLInpaintPipeline"},
    control_pipelines={"txt2img": "StableDiffusionXLControlNetPipeline",
                       "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
                       "inpaint": "StableDiffusionXLControlNetInpaintPipeline"},
    lcm_lora="latent-consistency/lcm-lora-sdxl", tiny_vae="madebyollin/taesdxl",
    latent_rgb=((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653), (0.0568, 0.1687, -0.0755),
                (-0.3112, -0.2359, -0.2076)),
    resident_bytes=int(5.6 * 2**30), weights_bytes=2 * 3_470_000_000,  # UNet 2.57B, VAE 84M, ViT-L 123M, bigG 695M
)
