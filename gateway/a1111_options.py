"""AUTOMATIC1111's settings (``/sdapi/v1/options``) as clients read and write them.

Clients read keys at start (``send_seed``, ``samples_format``, ``CLIP_stop_at_last_layers``,
``sd_vae``...) and some write one and read it back, so every key here is served with A1111's
default and takes a write of its type. Writes belong to the client that made them (like its
checkpoint: ``client_options``), never to everyone. Those that mean something here are honoured on
that client's later A1111 requests (``generation_fields``: the images' format and quality, as A1111's
API encodes its base64 images, and token merging; the checkpoint, by the caller); the rest are kept
and echoed only.
"""

from __future__ import annotations

from gateway.errors import ApiError

# A1111's defaults (modules/shared_options.py) for the keys its clients read; sd_model_checkpoint and
# sd_checkpoint_hash are computed from the model list.
DEFAULTS: dict[str, bool | int | float | str] = {
    "samples_save": True, "samples_format": "png", "samples_filename_pattern": "", "save_images_add_number": True,
    "grid_save": True, "grid_format": "png", "enable_pnginfo": True, "save_txt": False, "jpeg_quality": 80,
    "webp_lossless": False, "export_for_4chan": True, "img_downscale_threshold": 4.0, "target_side_length": 4000,
    "outdir_samples": "", "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images", "save_to_dirs": True, "face_restoration": False,
    "face_restoration_model": "CodeFormer", "code_former_weight": 0.5, "face_restoration_unload": False,
    "sd_checkpoint_cache": 0, "sd_vae_checkpoint_cache": 0, "sd_vae": "Automatic",
    "sd_vae_overrides_per_model_preferences": True, "CLIP_stop_at_last_layers": 1, "enable_emphasis": True,
    "enable_batch_seeds": True, "comma_padding_backtrack": 20, "upcast_attn": False, "randn_source": "GPU",
    "sd_unet": "Automatic", "token_merging_ratio": 0.0, "token_merging_ratio_img2img": 0.0,
    "token_merging_ratio_hr": 0.0, "img2img_fix_steps": False, "img2img_background_color": "#ffffff",
    "initial_noise_multiplier": 1.0, "eta_ddim": 0.0, "eta_ancestral": 1.0, "eta_noise_seed_delta": 0,
    "always_discard_next_to_last_sigma": False, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0,
    "k_sched_type": "Automatic", "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0, "send_seed": True,
    "send_size": True, "show_progressbar": True, "live_previews_enable": True, "live_preview_refresh_period": 1000,
    "show_progress_every_n_steps": 10, "sd_lora": "None", "lora_preferred_name": "Alias from file",
    "add_model_hash_to_info": True, "add_model_name_to_info": True, "add_version_to_infotext": True,
    "interrogate_keep_models_in_memory": False, "enable_quantization": False,
}
_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
_MAX_TEXT = 1000


def checked(body: dict) -> dict:
    """The writable options of a POST body, each of its default's type (an int where a float is
    expected is fine; a bool never passes for a number); unknown keys are ignored, as A1111 does.
    ``sd_model_checkpoint`` is the caller's to check (it needs the model list)."""
    kept = {}
    for key, value in body.items():
        if key not in DEFAULTS:
            continue
        default = DEFAULTS[key]
        kind = type(default)
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else
              isinstance(value, str) and len(value) <= _MAX_TEXT)
        if not ok:
            raise ApiError(400, "invalid_params", f"option {key} must be {kind.__name__}, like its default "
                           f"{default!r}", "Send the option with a value of its type (GET /sdapi/v1/options).",
                           field=key)
        if key == "samples_format" and value.lower() not in _FORMATS:
            raise ApiError(400, "invalid_params", f"samples_format {value[:20]!r} is not one of png, jpg, webp",
                           "Use png, jpg or webp.", field=key)
        kept[key] = float(value) if kind is float else value
    return kept


def generation_fields(chosen: dict, img2img: bool) -> dict:
    """What a client's stored options set on its A1111 requests (the request's own values win)."""
    fields = {}
    if "samples_format" in chosen:
        fields["format"] = _FORMATS[chosen["samples_format"].lower()]
    if "jpeg_quality" in chosen:
        fields["quality"] = min(100, max(1, chosen["jpeg_quality"]))
    ratio = chosen.get("token_merging_ratio_img2img" if img2img else "token_merging_ratio")
    if ratio:
        fields["token_merging"] = ratio
    return fields
