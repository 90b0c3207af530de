"""The engine: everything that imports torch, diffusers or transformers, and nothing else does.

``diffusers_pipeline`` runs Stable Diffusion on the CPU; beside it live its speed levers
(``deepcache``, ``token_merging``, ``channels_last``), the fast preset's parts (``preset_parts``),
weight residency, the one-time bf16 conversion (``convert``, run as a child process) and the tiny
random-weight model for tests (``tiny_model``). ``tests/test_dependency_rules.py`` keeps torch
inside this package, so a second backend can sit beside it and the fake pipeline runs without it.
"""
