"""ControlNet's preprocessors ("modules") and A1111's names for a unit's choices, shared by the gateway
(A1111's ControlNet API, /v1/controlnets) and the model server (which runs them).

The built-in preprocessors need no model file; the others (depth, pose, soft edges, ...) need an
annotator's weights and are listed as known but unavailable until a server has them, so a unit naming
one gets a clear refusal instead of "unknown".
"""

from __future__ import annotations

import dataclasses

IP_ADAPTER = "ip-adapter"  # the module of an IP-Adapter's unit


@dataclasses.dataclass(frozen=True)
class Slider:
    """One of a preprocessor's two settings (threshold_a / threshold_b), as A1111's UI shows it."""

    name: str
    value: float
    min: float
    max: float
    step: float = 1.0


@dataclasses.dataclass(frozen=True)
class Module:
    """A preprocessor: what it makes of a control image, and its settings."""

    title: str  # for people
    a: Slider | None = None
    b: Slider | None = None
    resolution: bool = True  # it works at processor_res (not "none" or "invert", which keep the image)
    needs_mask: bool = False  # inpaint: the job's mask marks what the ControlNet must fill


# name -> the preprocessor; names as A1111's ControlNet extension spells them (its module_list).
BUILTIN_MODULES: dict[str, Module] = {
    "none": Module("the image as it is (an already made control map)", resolution=False),
    "canny": Module("Canny edges", Slider("Canny Low Threshold", 100, 1, 255),
                    Slider("Canny High Threshold", 200, 1, 255)),
    "invert": Module("inverted (white background, black lines, to a map)", resolution=False),
    "binary": Module("black and white by a threshold (0: Otsu's)", Slider("Binary threshold", 0, 0, 255)),
    "threshold": Module("black and white by a threshold", Slider("Binarization Threshold", 127, 0, 255)),
    "scribble_xdog": Module("scribble from soft edges (XDoG)", Slider("XDoG Threshold", 32, 1, 64)),
    "blur_gaussian": Module("Gaussian blur", Slider("Sigma", 9.0, 0.01, 64.0, 0.01)),
    "tile_resample": Module("downsampled for the tile ControlNet", Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01)),
    "color": Module("a coarse colour grid (64 px cells)"),
    "shuffle": Module("the content shuffled (the shuffle ControlNet)"),
    "inpaint_only": Module("the image with the mask's part to fill (the inpaint ControlNet)", needs_mask=True),
    # An IP-Adapter's unit: the image is the reference its CLIP image encoder reads (the model is an IP-Adapter).
    IP_ADAPTER: Module("the reference image for an IP-Adapter (its image encoder reads it)", resolution=False),
}
# A1111's longer spellings and older names of the same preprocessors.
ALIASES = {
    "invert (from white bg & black line)": "invert",
    "inpaint": "inpaint_only",
    "inpaint_global_harmonious": "inpaint_only",
    "tile_colorfix": "tile_resample",
    "scribble_threshold": "threshold",
    # A1111 names the IP-Adapter "preprocessor" for the image encoder it runs.
    **{name: IP_ADAPTER for name in ("ip-adapter_clip_sd15", "ip-adapter_clip_h", "ip-adapter_clip_sdxl",
                                     "ip-adapter_clip_g", "ip-adapter_clip_sdxl_plus_vith", "ip-adapter-auto")},
}
# Those that need an annotator's weights, which no server here has yet: refused by name, with why.
ANNOTATOR_MODULES = ("depth_midas", "depth_anything", "depth_zoe", "depth_leres", "normal_bae", "openpose",
                     "openpose_full", "openpose_face", "openpose_hand", "dw_openpose_full", "lineart_realistic",
                     "lineart_anime", "lineart_coarse", "softedge_hed", "softedge_pidinet", "scribble_hed",
                     "scribble_pidinet", "mlsd", "seg_ofade20k", "seg_ufade20k", "mediapipe_face", "reference_only",
                     "ip-adapter_face_id", "ip-adapter_face_id_plus")

# A1111's control modes, by its UI's words and its API's numbers.
CONTROL_MODE_NAMES = {"balanced": "Balanced", "prompt": "My prompt is more important",
                      "control": "ControlNet is more important"}
# A1111's resize modes (the extension's words and numbers): just resize, crop and resize, resize and fill.
RESIZE_MODE_NAMES = {"stretch": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}
RESIZE_MODE_NUMBERS = ("stretch", "crop", "fill")


def module_named(name: str) -> str | None:
    """The built-in preprocessor ``name`` means (an A1111 alias too), else None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in BUILTIN_MODULES else None


def threshold(module: str, which: str, given: float) -> float:
    """A unit's threshold_a or threshold_b: as given, or the module's default when -1 (A1111's "unset")."""
    slider = getattr(BUILTIN_MODULES[module], which)
    if slider is None:
        return given
    if given < 0:
        return slider.value
    return min(max(given, slider.min), slider.max)
