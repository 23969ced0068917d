"""Extractors and session driver for DeepSeek-OCR v1, Hugging Face remote code (config `deepseek_ocr_v1`).

Facts used (docs/models/deepseek-ocr-v1.md): everything but CLIP's TorchScript activation is what v1 shares with the
remote-code DeepSeek-OCR 2 (model_configs/deepseek_remote.py): the view plan and lanes, the MoE ledger from the
expert modules, and the vendor's own `infer()` run in a resolution mode (`[session.modes]` in the TOML).
"""

from __future__ import annotations

from typing import Any

from .deepseek_remote import (  # noqa: F401  (the extractors and [session] functions named in the TOML)
    infer_session, moe_selection, ocr_model_done, ocr_model_views, step_images, view_lane)
from .hf import generate_probe  # noqa: F401  (the [session] probe named in the TOML)


def quick_gelu(x: Any) -> Any:
    """Plain-Python twin of CLIP's TorchScript `quick_gelu`, bound only during the TorchLens trace."""
    import torch

    return x * torch.sigmoid(1.702 * x)
