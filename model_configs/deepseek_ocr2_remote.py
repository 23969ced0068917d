"""Extractors for DeepSeek-OCR 2, Hugging Face remote code (config `deepseek_ocr2_remote`).

Facts used (docs/models/deepseek-ocr2-remote.md): the vision calls, the MoE and the `infer()` session are v1's
(model_configs/deepseek_remote.py; sam_model, qwen2_model and projector per view, crops first). What is its own: a
sample's features are [P x 144 crop rows, 256 global rows, 1 separator], written into the prompt's image positions
by a masked scatter that silently drops the rows that do not fit; so the step lane of a prefill carries the image
positions (a host copy of `images_seq_mask`, declared in the TOML) and the model call the feature rows its
projector calls made, which the report checks against each other (`[[image_positions]]`).
"""

from __future__ import annotations

from typing import Any

from ..events.lanes import IMAGE_POSITIONS, PHASE, PREFILL
from .deepseek_remote import (  # noqa: F401  (the extractors and [session] functions named in the TOML)
    infer_session, moe_selection, ocr_model_views, step_images, view_lane)
from .hf import generate_probe  # noqa: F401  (the [session] probe named in the TOML)
from .shapes import step_lane

SEPARATORS_PER_SAMPLE = 1  # `view_seperator`, after the global view of every sample


def ocr_step(call: Any) -> dict[str, Any]:
    """The root forward's step lane; in a prefill with images, the image positions of all its samples."""
    lane = step_lane(call)
    mask = call.arg("images_seq_mask")
    if lane[PHASE] == PREFILL and mask is not None and call.arg("images") is not None:
        lane[IMAGE_POSITIONS] = sum(sum(row) for row in mask.tolist())  # the declared host copy
    return lane


def vision_features(call: Any, result: Any) -> dict[str, Any]:
    """`model.forward`: whether vision ran and, if so, the feature rows made for the image positions (projector rows
    of every view, plus one separator per sample, counted by its global view)."""
    views = [c.lane for c in call.children if c.role == "projector"]
    if not views:
        return {"vision_ran": False}
    rows = sum(v["batch"] * v["tokens"] for v in views)
    samples = sum(v["view"] == "global" for v in views)
    return {"vision_ran": True, "vision_features": rows + SEPARATORS_PER_SAMPLE * samples}
