"""Classifier-free guidance's two halves through the UNet one after the other (the plan's
``guidance_halves``): the pipelines run the prompt's and the negative prompt's predictions as one
batch of two, whose activations at a large size are the UNet's largest (SDXL at 1024x1024: about
1.3 GB); one half at a time holds half of them, for the same arithmetic. Like step caching this patches
one job's UNet on the way in and restores it on the way out (a cancel included); not with step caching,
which keeps features per batch, and not on OpenVINO, whose UNet is compiled for the whole batch."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def _row(value, i: int, batch: int):
    """Row ``i`` of a batched argument (tensors of the batch's length, and the dicts of them SDXL passes)."""
    if torch.is_tensor(value) and value.ndim and value.shape[0] == batch:
        return value[i:i + 1]
    if isinstance(value, dict):
        return {key: _row(item, i, batch) for key, item in value.items()}
    return value


@contextmanager
def guidance_halves(unet, on: bool):
    """While inside, a UNet call on a batch runs row by row, the outputs concatenated, when ``on``."""
    if not on:
        yield
        return
    original, patched_already = unet.forward, "forward" in vars(unet)

    def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
        batch = sample.shape[0]
        if batch < 2 or args:
            return original(sample, timestep, encoder_hidden_states, *args, **kwargs)
        outs = [original(sample[i:i + 1], _row(timestep, i, batch), encoder_hidden_states[i:i + 1],
                         **{**_row(kwargs, i, batch), "return_dict": False})[0] for i in range(batch)]
        out = torch.cat(outs)
        return (out,) if kwargs.get("return_dict", True) is False else _Output(out)

    unet.forward = forward
    try:
        yield
    finally:
        if patched_already:
            unet.forward = original
        else:
            del unet.forward  # back to the class's method


class _Output:
    """Quacks like UNet2DConditionOutput for callers that read ``.sample`` or index it."""

    def __init__(self, sample):
        self.sample = sample

    def __getitem__(self, index):
        return (self.sample,)[index]
