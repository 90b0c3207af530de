"""The tiles an image is upscaled in: a grid of overlapping squares whose size, not the image's,
sets the upscaler's activation memory, so the peak stays flat whatever the output size."""

from __future__ import annotations


def spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` spans covering ``length`` with tiles of ``tile`` overlapping by at least
    ``overlap``; the last one ends at the edge (so none is smaller than a tile)."""
    if length <= tile:
        return [(0, length)]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return [(start, start + tile) for start in starts]


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(left, top, right, bottom)`` of every tile, row by row."""
    return [(x0, y0, x1, y1) for y0, y1 in spans(height, tile, overlap) for x0, x1 in spans(width, tile, overlap)]
