"""Finishing an image: upscalers (built-in resamplers and model files), upscale jobs and the hires fix.

Torch-free: what runs an upscaler model is the engine's (``engine/upscale_models.py``) or, without
torch, the fake's; this package lists, checks and orchestrates.
"""
