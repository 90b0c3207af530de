"""ControlNet's preprocessors ("modules") and A1111's names for a unit's choices, shared by the gateway
(A1111's ControlNet API, /v1/controlnets) and the model server (which runs them).

The built-in preprocessors need no model file. Those in ANNOTATOR_MODULES run an annotator model (depth,
line art, soft edges, straight lines, body pose, normals) whose weights a server may have (ANNOTATOR_DIR;
the model server says which it has); the rest of A1111's (hand and face pose, segmentation, ...) this server
does not run: they are known by name, so a unit naming one gets a clear refusal instead of "unknown".
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
    annotator: str = ""  # the annotator model it runs (model_server/control/annotator_files.py), "" none


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
    # the extension's names before v1.1
    "depth": "depth_midas", "lineart": "lineart_realistic", "hed": "softedge_hed", "hed_safe": "softedge_hedsafe",
    "fake_scribble": "scribble_hed", "pidinet": "softedge_pidinet", "pidinet_safe": "softedge_pidisafe",
    "pidinet_scribble": "scribble_pidinet", "pidinet_sketch": "scribble_pidinet", "normal_map": "normal_bae",
    # A1111 names the IP-Adapter "preprocessor" for the image encoder it runs.
    **{name: IP_ADAPTER for name in ("ip-adapter_clip_sd15", "ip-adapter_clip_h", "ip-adapter_clip_sdxl",
                                     "ip-adapter_clip_g", "ip-adapter_clip_sdxl_plus_vith", "ip-adapter-auto")},
}
# Those that run an annotator model, by A1111's names; each names the annotator whose weights it needs.
ANNOTATOR_MODULES: dict[str, Module] = {
    "depth_midas": Module("depth (MiDaS DPT-Hybrid)", annotator="midas"),
    "depth_anything": Module("depth (Depth Anything)", annotator="depth_anything"),
    "depth_anything_v2": Module("depth (Depth Anything V2)", annotator="depth_anything"),
    "lineart_realistic": Module("line art of a photo", annotator="lineart"),
    "lineart_coarse": Module("coarse line art", annotator="lineart_coarse"),
    "lineart_anime": Module("line art of a drawing (anime)", annotator="lineart_anime"),
    "softedge_hed": Module("soft edges (HED)", annotator="hed"),
    "softedge_hedsafe": Module("soft edges (HED, quantized: fewer hidden details)", annotator="hed"),
    "scribble_hed": Module("scribble from HED edges", annotator="hed"),
    "softedge_pidinet": Module("soft edges (PiDiNet)", annotator="pidinet"),
    "softedge_pidisafe": Module("soft edges (PiDiNet, quantized)", annotator="pidinet"),
    "scribble_pidinet": Module("scribble from PiDiNet edges", annotator="pidinet"),
    "mlsd": Module("straight lines (M-LSD)", Slider("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
                   Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01), annotator="mlsd"),
    "openpose": Module("the people's pose (OpenPose body keypoints)", annotator="openpose"),
    "normal_bae": Module("surface normals (NormalBAE)", annotator="normal_bae"),
}
# A1111's that no server here runs (their annotators need libraries this server does not ship: OpenPose's hand
# and face models need torchvision): refused by name, with what to do instead.
UNSUPPORTED_MODULES = ("depth_zoe", "depth_leres", "depth_leres++", "normal_midas",
                       "openpose_full", "openpose_face", "openpose_faceonly", "openpose_hand", "dw_openpose_full",
                       "animal_openpose", "seg_ofade20k", "seg_ofcoco", "seg_ufade20k", "mediapipe_face",
                       "reference_only", "reference_adain", "reference_adain+attn", "ip-adapter_face_id",
                       "ip-adapter_face_id_plus", "softedge_teed", "mlsd_anything")
MODULES: dict[str, Module] = {**BUILTIN_MODULES, **ANNOTATOR_MODULES}

# A1111's control modes, by its UI's words and its API's numbers.
CONTROL_MODE_NAMES = {"balanced": "Balanced", "prompt": "My prompt is more important",
                      "control": "ControlNet is more important"}
# A1111's resize modes (the extension's words and numbers): just resize, crop and resize, resize and fill.
RESIZE_MODE_NAMES = {"stretch": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}
RESIZE_MODE_NUMBERS = ("stretch", "crop", "fill")


def module_named(name: str) -> str | None:
    """The preprocessor ``name`` means (an A1111 alias too; built in or with an annotator), else None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in MODULES else None


def runnable(annotator_modules) -> list[str]:
    """The preprocessors a server runs, in MODULES' order: the built-in ones and those whose annotator it has
    (``annotator_modules``: ModelList.annotator_modules)."""
    have = set(annotator_modules)
    return [name for name in MODULES if name in BUILTIN_MODULES or name in have]


def threshold(module: str, which: str, given: float) -> float:
    """A unit's threshold_a or threshold_b: as given, or the module's default when -1 (A1111's "unset")."""
    slider = getattr(MODULES[module], which)
    if slider is None:
        return given
    if given < 0:
        return slider.value
    return min(max(given, slider.min), slider.max)
