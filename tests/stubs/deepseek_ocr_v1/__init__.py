"""Stubbed DeepSeek-OCR v1 remote code for tests, loaded under a dynamic module name.

``load_stub_model`` imports the modeling files as Hugging Face imports remote code (``stubs/remote_code.py``), under
``transformers_modules.deepseek_ai.DeepSeek_OCR.<rev>`` (``fresh=True`` gets a separate copy of every class), and
lets ``modeling_deepseekocr`` import its siblings relative to that package.

Nothing in this package imports the modeling files under ``stubs.deepseek_ocr_v1.*``; tests must go through the
loader. ``StubConfig``, ``MODES``, ``choose_crop_grid``, ``image_positions``, ``plan_image`` and
``build_infer_inputs`` are re-exported lazily from the dynamically loaded modules.
"""
from __future__ import annotations

import itertools
import types
from pathlib import Path

from stubs.remote_code import load_modules

STUB_DIR = Path(__file__).resolve().parent
PACKAGE_PREFIX = "transformers_modules.deepseek_ai.DeepSeek_OCR"
# load order: siblings before the file that imports them
MODULE_FILES = ("configuration_deepseek_v2", "deepencoder", "modeling_deepseekv2", "modeling_deepseekocr")

_fresh_counter = itertools.count(1)
_LAZY = ("StubConfig", "MODES", "choose_crop_grid", "candidate_grids", "image_positions", "plan_image",
         "build_infer_inputs")


def load_stub_modules(fresh: bool = False) -> types.SimpleNamespace:
    """Import (or reuse) the stub files under the dynamic package; returns the modules and the package name."""
    salt = f"fresh-{next(_fresh_counter)}" if fresh else ""
    return load_modules(PACKAGE_PREFIX, [STUB_DIR / f"{name}.py" for name in MODULE_FILES], salt)


def load_stub_model(config=None, seed: int = 0, fresh: bool = False):
    """Build ``DeepseekOCRForCausalLM`` (eval mode) from the dynamically imported stub files.

    ``config``: a ``StubConfig`` (default tiny); ``seed``: parameter init seed (the global RNG state is restored
    afterwards); ``fresh``: import a separate copy of the modules (new classes) instead of reusing the cached one.
    """
    import torch

    mods = load_stub_modules(fresh=fresh)
    if config is None:
        config = mods.configuration_deepseek_v2.StubConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = mods.modeling_deepseekocr.DeepseekOCRForCausalLM(config)
    return model.eval()


def __getattr__(name: str):
    if name in _LAZY:
        mods = load_stub_modules()
        if name == "StubConfig":
            return mods.configuration_deepseek_v2.StubConfig
        return getattr(mods.modeling_deepseekocr, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load_stub_model", "load_stub_modules", "PACKAGE_PREFIX", "STUB_DIR", *_LAZY]
