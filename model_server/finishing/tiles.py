"""The tiles an image is upscaled in: a grid of overlapping squares whose size, not the image's,
sets the upscaler's activation memory, so the peak stays flat whatever the output size."""

from __future__ import annotations


def spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` spans covering ``length``: as few equal parts of at most ``tile`` as cover it, each
    widened by ``overlap`` into its neighbours (so neighbours share ``2 * overlap``). Work is then the
    image plus its seams: 512 in tiles of 256 is two spans of 272, not three of 256."""
    count = -(-length // tile)
    cuts = [round(i * length / count) for i in range(count + 1)]
    return [(max(0, a - overlap), min(length, b + overlap)) for a, b in zip(cuts, cuts[1:])]


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(left, top, right, bottom)`` of every tile, row by row."""
    return [(x0, y0, x1, y1) for y0, y1 in spans(height, tile, overlap) for x0, x1 in spans(width, tile, overlap)]
