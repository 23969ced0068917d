"""Independent oracle for the tests: DeepSeek-OCR 2's crop plan computed from the stated rule
(docs/models/deepseek-ocr2-transformers.md#crop-grid), without calling the image processor."""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

GLOBAL_TOKENS, TILE_TOKENS = 256, 144
TILE_SIZE, MIN_TILES, MAX_TILES = 768, 2, 6


class CropPlan(NamedTuple):
    """Crop plan of one image: grid ``cols x rows`` (0 x 0 without crops), ``num_crops`` K = cols*rows,
    and ``image_tokens`` = 256 + 144*K + 1."""

    cols: int
    rows: int
    num_crops: int
    image_tokens: int


def candidate_grids(min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES) -> list[tuple[int, int]]:
    """(cols, rows) with ``min_tiles <= cols*rows <= max_tiles``, ordered by area, then cols."""
    grids = [
        (c, r)
        for c in range(1, max_tiles + 1)
        for r in range(1, max_tiles + 1)
        if min_tiles <= c * r <= max_tiles
    ]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def expected_crops(
    width: int,
    height: int,
    tile: int = TILE_SIZE,
    min_tiles: int = MIN_TILES,
    max_tiles: int = MAX_TILES,
    exact: bool = False,
) -> CropPlan:
    """The crop plan computed from the stated rule, without calling the processor.

    No crops when ``max(W, H) <= tile``. Otherwise the grid minimising ``|W/H - cols/rows|``; on a tie the
    grid later in (area, cols) order replaces the current best only if ``W*H > 0.5 * tile**2 * cols * rows``.

    ``exact=False`` (default) compares the differences as Python floats, as the vendor code does, so that
    ties are float ties; ``exact=True`` uses rational arithmetic. They differ on a few sizes whose aspect ratio
    is exactly half-way between two grids but the float differences are not equal (e.g. 1105 x 2652: exact
    tie between 1x3 and 1x2, float picks 1x2; 8 of ~174 k sizes swept between 100 and 4000 px).
    """
    width, height = int(width), int(height)
    if max(width, height) <= tile:
        return CropPlan(0, 0, 0, GLOBAL_TOKENS + 1)
    aspect = Fraction(width, height) if exact else width / height
    area = width * height
    best, best_diff = None, None
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - (Fraction(cols, rows) if exact else cols / rows))
        if best_diff is None or diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and 2 * area > tile * tile * cols * rows:
            best = (cols, rows)
    cols, rows = best
    k = cols * rows
    return CropPlan(cols, rows, k, GLOBAL_TOKENS + TILE_TOKENS * k + 1)
