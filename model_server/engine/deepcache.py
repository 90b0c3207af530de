"""Step caching for the UNet (the DeepCache method: Ma et al., CVPR 2024, arXiv:2312.00858).

Between neighbouring denoising steps the UNet's deep, low-resolution features barely change.
Every ``interval``-th UNet call runs in full and keeps the input of the last up block (the
output of all the deep blocks); the calls in between run only the shallowest path: ``conv_in``,
the first down block without its downsampler, the last up block fed with the kept features,
and the output layers. For SD v1 that skips the work at 32x32, 16x16 and 8x8 latent
resolution (docs/performance.md has the measured cost of a shallow call). The images differ
from uncached ones: a quality trade-off, used only by the presets that say so.

Written against diffusers' ``UNet2DConditionModel`` (SD v1/v2 and SDXL layouts: SDXL's pooled text
and size ids are added to the timestep embedding on the shallow path too, and there the skipped
levels hold nearly all of its transformer blocks); anything it does not recognise (ControlNet
residuals, class embeddings, another added conditioning, a different block layout) runs uncached.
"""

from __future__ import annotations

import contextlib

import torch


class DeepCache:
    """Step caching around one image's denoising loop: patches the UNet on entry, restores it on exit."""

    def __init__(self, unet, interval: int):
        self.unet = unet
        self.interval = max(1, interval)
        self.calls = 0
        self.cached: torch.Tensor | None = None
        first_down, last_up = unet.down_blocks[0], unet.up_blocks[-1]
        # SDXL's added conditioning (pooled text + size ids) is understood; any other kind is not.
        self.text_time = unet.config.get("addition_embed_type") == "text_time"
        self.supported = (len(last_up.resnets) == len(first_down.resnets) + 1 and unet.class_embedding is None
                          and (getattr(unet, "add_embedding", None) is None or self.text_time))

    @contextlib.contextmanager
    def active(self):
        """Cache within this block (one image); the UNet is restored on the way out."""
        if self.interval <= 1 or not self.supported:
            yield self
            return
        self.calls, self.cached = 0, None
        hook = self.unet.up_blocks[-2].register_forward_hook(self._keep)
        original, patched_already = self.unet.forward, "forward" in vars(self.unet)
        self.unet.forward = self._forward(original)
        try:
            yield self
        finally:
            if patched_already:
                self.unet.forward = original
            else:
                del self.unet.forward  # back to the class's method
            hook.remove()
            self.cached = None

    def _keep(self, module, args, output):
        self.cached = output

    def _forward(self, original):
        def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
            call, self.calls = self.calls, self.calls + 1
            plain = not args and not any(kwargs.get(k) is not None for k in (
                "class_labels", "timestep_cond", "down_block_additional_residuals",
                "mid_block_additional_residual", "down_intrablock_additional_residuals", "attention_mask",
                "encoder_attention_mask")) and (self.text_time or kwargs.get("added_cond_kwargs") is None)
            if call % self.interval == 0 or self.cached is None or not plain \
                    or self.cached.shape[0] != sample.shape[0]:
                return original(sample, timestep, encoder_hidden_states, *args, **kwargs)
            out = self._shallow(sample, timestep, encoder_hidden_states, kwargs.get("cross_attention_kwargs"),
                                kwargs.get("added_cond_kwargs"))
            return (out,) if kwargs.get("return_dict", True) is False else _Output(out)

        return forward

    def _shallow(self, sample, timestep, encoder_hidden_states, cross_attention_kwargs, added_cond_kwargs=None):
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        if self.text_time:  # as UNet2DConditionModel.forward adds it
            emb = emb + unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                           added_cond_kwargs=added_cond_kwargs)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        encoder_hidden_states = unet.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=None)
        hidden = unet.conv_in(sample)
        residuals = (hidden,)
        down = unet.down_blocks[0]
        attentions = getattr(down, "attentions", None) or [None] * len(down.resnets)
        for resnet, attn in zip(down.resnets, attentions):
            hidden = resnet(hidden, emb)
            if attn is not None:
                hidden = attn(hidden, encoder_hidden_states=encoder_hidden_states,
                              cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]
            residuals += (hidden,)
        up = unet.up_blocks[-1]
        if getattr(up, "has_cross_attention", False):
            hidden = up(hidden_states=self.cached, temb=emb, res_hidden_states_tuple=residuals,
                        encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs)
        else:
            hidden = up(hidden_states=self.cached, temb=emb, res_hidden_states_tuple=residuals)
        if unet.conv_norm_out:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)


class _Output:
    """Quacks like UNet2DConditionOutput for callers that read ``.sample`` or index it."""

    def __init__(self, sample):
        self.sample = sample

    def __getitem__(self, index):
        return (self.sample,)[index]
