"""What a step's inputs hold, in words: the images of the batch (crops, grid, image tokens, and how one batched
crop call splits over them) and the padding of a batched prefill. Read from the step lanes (`IMAGES`,
`IMAGES_BATCHED`, `REAL_TOKENS`, docs/report-format.md#inputs); every writer prints these lines, none recomputes
them.

>>> step = {"step": 0, "phase": "prefill", "batch": 2, "seq_len": 10, "real_tokens": [10, 6], "images_batched": True,
...         "images": [{"crops": 6, "grid": "3x2", "tokens": 1121}, {"crops": 3, "tokens": 689}]}
>>> print(image_line(step))  # doctest: +NORMALIZE_WHITESPACE
step 0: 2 images: image 0: 6 crops (grid 3x2) + global view = 1121 image tokens; image 1: 3 crops + global view =
689 image tokens; the crops ran as one batch of 6+3 = 9, split per image afterwards by a loop that calls no module
>>> print(padding_line(step))  # doctest: +NORMALIZE_WHITESPACE
step 0: padding: 4 of 20 prefill positions (20.0%) are padding (real tokens per sample 10/6); every layer processes
them: GEMM M (and MoE token counts, where there are experts) include them
"""

from __future__ import annotations

from typing import Any

from ..events.lanes import IMAGES, IMAGES_BATCHED, REAL_TOKENS, STEP


def _image(i: int, image: dict[str, Any]) -> str:
    crops = image.get("crops")
    grid = f" (grid {image['grid']})" if image.get("grid") else ""
    views = "global view only" if crops == 0 else f"{crops} crops{grid} + global view" if crops else "views unknown"
    tokens = f" = {image['tokens']} image tokens" if image.get("tokens") is not None else ""
    return f"image {i}: {views}{tokens}"


def image_line(step: dict[str, Any]) -> str | None:
    images = step.get(IMAGES)
    if not images:
        return None
    crops = [image.get("crops") or 0 for image in images]
    split = ""
    if step.get(IMAGES_BATCHED) and any(crops):
        split = (f"; the crops ran as one batch of {'+'.join(map(str, crops))}"
                 + (f" = {sum(crops)}" if len(crops) > 1 else "") + ", split per image afterwards by a loop that "
                 "calls no module")
    return (f"step {step[STEP]}: {len(images)} image{'s' if len(images) > 1 else ''}: "
            + "; ".join(_image(i, image) for i, image in enumerate(images)) + split)


def padding_line(step: dict[str, Any]) -> str | None:
    real = step.get(REAL_TOKENS)
    if not real or "seq_len" not in step:
        return None
    positions = step["seq_len"] * len(real)
    padded = positions - sum(real)
    per_sample = "/".join(map(str, real))
    if not padded:
        return f"step {step[STEP]}: no padding (real tokens per sample {per_sample})"
    return (f"step {step[STEP]}: padding: {padded} of {positions} prefill positions ({100 * padded / positions:.1f}%) "
            f"are padding (real tokens per sample {per_sample}); every layer processes them: GEMM M (and MoE token "
            "counts, where there are experts) include them")


def input_lines(steps: list[dict[str, Any]]) -> list[str]:
    """One line per step with images, one per step with a per-sample padding count, in step order."""
    return [line for step in steps for line in (image_line(step), padding_line(step)) if line]
