"""Stubbed remote code of DeepSeek-OCR 2 (``deepseek-ai/DeepSeek-OCR-2``, ``trust_remote_code``) for tests.

Written from docs/models/deepseek-ocr2-remote.md, not from the vendor's code. ``load_stub_model`` imports the files
as the hub imports remote code (``stubs/remote_code.py``), under ``transformers_modules.deepseek_ai.DeepSeek_OCR_2.<rev>``:
``configuration_deepseek_v2`` and ``modeling_deepseekv2`` are the v1 stub's own files (the vendor ships them
byte-identical with both models), SAM comes from the v1 stub's ``deepencoder`` (the vendor's ``deepencoderv2`` builds
the same SAM, its ``net_3`` at the encoder's width), and ``deepencoderv2`` / ``modeling_deepseekocr2`` are this
folder's. The Qwen2 encoder subclasses transformers' ``Qwen2Model`` as the vendor's does, so the stub, like the
vendor, needs transformers 4.45-4.47.
"""
from __future__ import annotations

import itertools
import types
from pathlib import Path

from stubs.remote_code import load_modules

STUB_DIR = Path(__file__).resolve().parent
V1_DIR = STUB_DIR.parent / "deepseek_ocr_v1"
PACKAGE_PREFIX = "transformers_modules.deepseek_ai.DeepSeek_OCR_2"
FILES = (V1_DIR / "configuration_deepseek_v2.py", V1_DIR / "deepencoder.py", V1_DIR / "modeling_deepseekv2.py",
         STUB_DIR / "deepencoderv2.py", STUB_DIR / "modeling_deepseekocr2.py")

_fresh_counter = itertools.count(1)


def load_stub_modules(fresh: bool = False) -> types.SimpleNamespace:
    """Import (or reuse) the stub files under the dynamic package; returns the modules and the package name."""
    return load_modules(PACKAGE_PREFIX, list(FILES), f"fresh-{next(_fresh_counter)}" if fresh else "")


def load_stub_model(config=None, seed: int = 0, fresh: bool = False):
    """Build ``DeepseekOCR2ForCausalLM`` (eval mode): ``config`` a ``StubConfig`` (default tiny; its LLM fields are
    read, the vision sizes are the builders'); ``seed`` the parameter init seed (the global RNG is left alone);
    ``fresh`` a separate copy of the modules (new classes)."""
    import torch

    mods = load_stub_modules(fresh=fresh)
    config = mods.configuration_deepseek_v2.StubConfig() if config is None else config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = mods.modeling_deepseekocr2.DeepseekOCR2ForCausalLM(config)
    return model.eval()


__all__ = ["load_stub_model", "load_stub_modules", "PACKAGE_PREFIX", "STUB_DIR"]
