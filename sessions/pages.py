"""Document pages for offline sessions: a synthetic page that looks like a document, or an image file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SessionError


SYNTHETIC = "synthetic:"


def page_spec(text: str) -> Path | tuple[int, int]:
    """A command-line page: `synthetic:WIDTHxHEIGHT` (a synthetic page of that size) or an image file's path."""
    if not text.startswith(SYNTHETIC):
        return Path(text)
    w, x, h = text[len(SYNTHETIC):].partition("x")
    if not (x and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise SessionError(f"{text!r}: a synthetic page reads synthetic:WIDTHxHEIGHT, e.g. synthetic:1600x1200")
    return int(w), int(h)


def load_image(path: Path | tuple[int, int] | None, size: tuple[int, int] = (1600, 1200)) -> Any:
    """The RGB image at `path`, a synthetic page of the size `path` gives (width, height), or of `size` when `path`
    is None."""
    if path is None or isinstance(path, tuple):
        return synthetic_page(*(path or size))
    from PIL import Image

    if not Path(path).is_file():
        raise SessionError(f"image {path} not found: pass an existing image file with --image")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise SessionError(f"image {path} cannot be decoded ({exc}): pass a PNG, JPEG or other image file") from None


def synthetic_page(width: int, height: int, seed: int = 0):
    """A PIL RGB image that looks like a document page: white, margins, lines of dark 'word' rectangles,
    an occasional heading and paragraph breaks. Deterministic for ``seed``."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (int(width), int(height)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    margin_x = max(4, int(width * 0.08))
    margin_y = max(4, int(height * 0.06))
    line_h = max(3, int(height / 60))
    gap = max(2, line_h // 2)
    y = margin_y
    first = True
    while y + line_h < height - margin_y:
        heading = first or rng.random() < 0.06
        h = int(line_h * 1.6) if heading else line_h
        if y + h >= height - margin_y:
            break
        x = margin_x
        right = width - margin_x if not heading else margin_x + int((width - 2 * margin_x) * rng.uniform(0.3, 0.6))
        if not heading and rng.random() < 0.15:  # last line of a paragraph
            right = margin_x + int((width - 2 * margin_x) * rng.uniform(0.2, 0.8))
        while x < right:
            w = max(2, int(line_h * rng.uniform(1.0, 5.0)))
            if x + w > right:
                break
            shade = rng.randint(0, 70)
            draw.rectangle([x, y, x + w, y + h - 1], fill=(shade, shade, shade))
            x += w + max(2, int(line_h * 0.6))
        y += h + gap
        if not heading and rng.random() < 0.12:  # paragraph break
            y += line_h
        first = False
    return img
