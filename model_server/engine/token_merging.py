"""Token merging for the UNet's largest self-attentions (the ToMe for SD method: Bolya and Hoffman,
CVPR-W 2023, arXiv:2303.17604). A1111 offers it as "token merging ratio".

At 512x512 the 64x64-latent transformer blocks attend over 4,096 tokens with heads of 40
channels, a shape PyTorch's CPU attention runs at about a third of the matmul rate: a third of
a bf16 UNet call here (docs/performance.md). Before each such self-attention, a ``ratio`` share
of the tokens is averaged into its most similar neighbour (bipartite soft matching: one
destination token per 2x2 cell, every other token joins its most similar destination if it is
among the most similar pairs); attention runs on the rest and each merged token takes its
destination's output back. Attention work falls with the square of the kept share. Only the
highest-resolution blocks are merged, and only their self-attention: the smaller blocks are
cheap, so merging there would buy little speed for its loss of detail. The images differ from
unmerged ones: a quality trade-off the caller asks for. The token grid is computed per image from
its size, so any width and height work.
"""

from __future__ import annotations

import contextlib

import torch


_SCORE_ROWS = 1024  # sources scored at once (bounds the similarity matrix)


class TokenMerging:
    """Token merging around one image's denoising loop: hooks on entry, removed on exit."""

    def __init__(self, unet, ratio: float, latent_hw: tuple[int, int], seed: int = 0):
        self.unet, self.ratio = unet, float(ratio)
        # The token grid of the highest-resolution blocks that have attention (SD v1: the first,
        # at the latent's own size); each down block before it halves the grid.
        first = next((i for i, block in enumerate(unet.down_blocks) if getattr(block, "attentions", None)), 0)
        self.hw = (-(-latent_hw[0] // 2**first), -(-latent_hw[1] // 2**first))  # stride-2 convs round up
        self.generator = torch.Generator().manual_seed(seed)  # which token of a cell is the destination
        self.merged_calls = 0

    @contextlib.contextmanager
    def active(self):
        """Merge inside this block (one image); every hook is removed on the way out."""
        if self.ratio <= 0:
            yield self
            return
        handles = []
        for module in self.unet.modules():
            attn = getattr(module, "attn1", None)
            if attn is not None and hasattr(module, "norm1") and not getattr(attn, "is_cross_attention", False):
                handles.append(attn.register_forward_pre_hook(self._merge, with_kwargs=True))
                handles.append(attn.register_forward_hook(self._unmerge))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _merge(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        h, w = self.hw
        if hidden.dim() != 3 or hidden.shape[1] != h * w or kwargs.get("encoder_hidden_states") is not None:
            module._tome_unmerge = None  # a smaller block, or not a plain self-attention: untouched
            return None
        merge, module._tome_unmerge = bipartite_merge(hidden, h, w, self.ratio, self.generator)
        self.merged_calls += 1
        merged = merge(hidden)
        return ((merged, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": merged})

    @staticmethod
    def _unmerge(module, args, output):
        unmerge, module._tome_unmerge = getattr(module, "_tome_unmerge", None), None
        return None if unmerge is None else unmerge(output)


def bipartite_merge(x: torch.Tensor, h: int, w: int, ratio: float, generator: torch.Generator):
    """Plan one merge for tokens ``x`` (batch, h*w, channels) laid out row-major on an h x w grid.

    Returns (merge, unmerge): merge maps (batch, h*w, c) to (batch, h*w - r, c); unmerge maps
    an output of that length back to (batch, h*w, c)."""
    batch, tokens, _ = x.shape
    cells_h, cells_w = h // 2, w // 2
    # One destination per 2x2 cell, at a random corner; the other corners (and any odd last
    # row or column) are sources.
    corner = torch.randint(4, (cells_h, cells_w), generator=generator)
    is_dst = torch.zeros(h, w, dtype=torch.bool)
    rows = torch.arange(cells_h)[:, None] * 2 + corner // 2
    cols = torch.arange(cells_w)[None, :] * 2 + corner % 2
    is_dst[rows, cols] = True
    flat = is_dst.flatten()
    dst_idx, src_idx = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
    r = min(int(tokens * ratio), src_idx.numel())
    if r <= 0 or dst_idx.numel() == 0:  # nothing to merge (or a grid too small for a 2x2 cell)
        return (lambda t: t), (lambda t: t)

    with torch.no_grad():
        metric = x / x.norm(dim=-1, keepdim=True)
        src_metric, dst_metric = metric[:, src_idx], metric[:, dst_idx].transpose(1, 2)
        # Cosine similarity of every source to every destination, a slice of sources at a time: the
        # whole matrix grows with the square of the pixels (200 MB at 1024x1024 in bf16).
        best, best_dst = zip(*((src_metric[:, i:i + _SCORE_ROWS] @ dst_metric).max(dim=-1)
                               for i in range(0, src_idx.numel(), _SCORE_ROWS)))
        best, best_dst = torch.cat(best, dim=1), torch.cat(best_dst, dim=1)
        order = best.argsort(dim=-1, descending=True)
        merged_src, kept_src = order[:, :r], order[:, r:]  # positions within the source list
        into = best_dst.gather(1, merged_src)  # each merged source's destination (within the dst list)
    channels = x.shape[-1]

    def expand(index):
        return index[..., None].expand(-1, -1, channels)

    def merge(t: torch.Tensor) -> torch.Tensor:
        src, dst = t[:, src_idx], t[:, dst_idx]
        kept = src.gather(1, expand(kept_src))
        dst = dst.scatter_reduce(1, expand(into), src.gather(1, expand(merged_src)), reduce="mean")
        return torch.cat([kept, dst], dim=1)

    def unmerge(t: torch.Tensor) -> torch.Tensor:
        n_kept = kept_src.shape[1]
        kept, dst = t[:, :n_kept], t[:, n_kept:]
        out = t.new_empty(batch, tokens, t.shape[-1])
        out[:, dst_idx] = dst
        src_positions = src_idx[None].expand(batch, -1)
        out.scatter_(1, expand(src_positions.gather(1, kept_src)), kept)
        out.scatter_(1, expand(src_positions.gather(1, merged_src)), dst.gather(1, expand(into)))
        return out

    return merge, unmerge
