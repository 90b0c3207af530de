"""Token merging (model_server/engine/token_merging.py): the merge plan, and the hooks on a real UNet."""

from __future__ import annotations

import pytest
import torch

from model_server.engine.token_merging import TokenMerging, bipartite_merge


def _tokens(batch=2, h=8, w=6, channels=5, seed=0):
    return torch.randn(batch, h * w, channels, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("h, w", [(8, 6), (7, 5)])  # odd sizes leave a last row/column of sources
def test_merge_shrinks_by_the_ratio_and_unmerge_restores_every_position(h, w):
    x = _tokens(h=h, w=w)
    r = int(h * w * 0.5)
    merge, unmerge = bipartite_merge(x, h, w, 0.5, torch.Generator().manual_seed(1))
    merged = merge(x)
    assert merged.shape == (2, h * w - r, 5)
    back = unmerge(merged)
    assert back.shape == x.shape and torch.isfinite(back).all()
    # Only the r merged sources and the destinations they joined change; every other token comes back exactly.
    changed = (back != x).any(dim=-1).sum(dim=1)
    assert all(0 < n <= 2 * r for n in changed.tolist())


def test_merged_tokens_are_averaged_into_their_most_similar_destination():
    # Two clusters of identical tokens: merging must only ever average within a cluster.
    h, w = 4, 4
    x = torch.zeros(1, h * w, 2)
    x[0, : h * w // 2, 0] = 1.0  # top half points one way
    x[0, h * w // 2:, 1] = 1.0  # bottom half the other
    merge, unmerge = bipartite_merge(x, h, w, 0.5, torch.Generator().manual_seed(3))
    back = unmerge(merge(x))
    assert torch.equal(back, x)


def test_ratio_zero_merges_nothing():
    x = _tokens()
    merge, unmerge = bipartite_merge(x, 8, 6, 0.0, torch.Generator())
    assert torch.equal(unmerge(merge(x)), x)


@pytest.fixture(scope="module")
def tiny_unet(tiny_model_dir):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet").eval()


def _call(unet, size=64):
    g = torch.Generator().manual_seed(0)
    latent = size // 8
    sample = torch.randn(1, 4, latent, latent, generator=g)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.inference_mode():
        return unet(sample, torch.tensor(10), context).sample


@pytest.mark.parametrize("size", [64, 80])
def test_on_a_unet_only_the_largest_self_attentions_merge_and_everything_is_restored_after(tiny_unet, size):
    plain = _call(tiny_unet, size)
    merging = TokenMerging(tiny_unet, 0.5, (size // 8, size // 8), seed=1)
    with merging.active():
        merged = _call(tiny_unet, size)
    # The tiny UNet has attention at one resolution only (down, mid and up blocks), so all of them merge;
    # SD v1.4 at 512x512 merges its 5 blocks at 64x64 and leaves the 11 smaller ones (docs/performance.md).
    blocks = sum(1 for m in tiny_unet.modules() if hasattr(m, "attn1") and hasattr(m, "norm1"))
    assert merging.merged_calls == blocks > 0
    assert merged.shape == plain.shape and torch.isfinite(merged).all()
    assert not torch.equal(merged, plain)
    assert torch.equal(_call(tiny_unet, size), plain)  # hooks gone: the plain UNet again


def test_ratio_zero_adds_no_hooks(tiny_unet):
    merging = TokenMerging(tiny_unet, 0.0, (8, 8))
    with merging.active():
        _call(tiny_unet)
    assert merging.merged_calls == 0


def test_attention_below_the_top_resolution_is_left_alone():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # attention at two resolutions, like SD v1's first blocks
        sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=8,
        attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")).eval()
    merging = TokenMerging(unet, 0.5, (8, 8))
    with merging.active(), torch.inference_mode():
        unet(torch.randn(1, 4, 8, 8), torch.tensor(10), torch.randn(1, 77, 8))
    top = len(unet.down_blocks[0].attentions) + len(unet.up_blocks[-1].attentions)
    assert merging.merged_calls == top == 3  # the 8x8 blocks; the 4x4 down, mid and up blocks run as they are


def test_scoring_in_slices_plans_the_same_merge_as_scoring_at_once(monkeypatch):
    from model_server.engine import token_merging

    x = _tokens(h=64, w=48, channels=16)
    merge, unmerge = bipartite_merge(x, 64, 48, 0.5, torch.Generator().manual_seed(1))
    monkeypatch.setattr(token_merging, "_SCORE_ROWS", 10**9)
    whole_merge, whole_unmerge = bipartite_merge(x, 64, 48, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(unmerge(merge(x)), whole_unmerge(whole_merge(x)))


def test_a_grid_too_small_for_a_cell_is_left_as_it_is():
    x = _tokens(h=1, w=6)
    merge, unmerge = bipartite_merge(x, 1, 6, 0.5, torch.Generator())
    assert torch.equal(unmerge(merge(x)), x)
