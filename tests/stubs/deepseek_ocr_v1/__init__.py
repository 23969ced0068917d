"""Stubbed DeepSeek-OCR v1 remote code for tests, loaded under a dynamic module name.

Hugging Face imports remote code as ``transformers_modules.<org>.<repo>.<revision>.<file>``; a patcher therefore
has to find classes from the live model object. ``load_stub_model`` reproduces that: it imports the modeling files
with ``importlib.util.spec_from_file_location`` under
``transformers_modules.deepseek_ai.DeepSeek_OCR.<rev>`` (``<rev>`` = first 12 hex digits of a SHA-1 over the stub
files' bytes; ``fresh=True`` salts it to get a separate copy of every class), registers the parent packages in
``sys.modules`` and lets ``modeling_deepseekocr`` import its siblings relative to that package.

Nothing in this package imports the modeling files under ``stubs.deepseek_ocr_v1.*``; tests must go through the
loader. ``StubConfig``, ``MODES``, ``choose_crop_grid``, ``image_positions``, ``plan_image`` and
``build_infer_inputs`` are re-exported lazily from the dynamically loaded modules.
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import sys
import types
from pathlib import Path

STUB_DIR = Path(__file__).resolve().parent
PACKAGE_PREFIX = "transformers_modules.deepseek_ai.DeepSeek_OCR"
# load order: siblings before the file that imports them
MODULE_FILES = ("configuration_deepseek_v2", "deepencoder", "modeling_deepseekv2", "modeling_deepseekocr")

_fresh_counter = itertools.count(1)
_LAZY = ("StubConfig", "MODES", "choose_crop_grid", "candidate_grids", "image_positions", "plan_image",
         "build_infer_inputs")


def _revision(salt: str = "") -> str:
    h = hashlib.sha1()
    for name in MODULE_FILES:
        h.update((STUB_DIR / f"{name}.py").read_bytes())
    h.update(salt.encode())
    return h.hexdigest()[:12]


def _ensure_package(name: str, path=None) -> types.ModuleType:
    mod = sys.modules.get(name)
    if mod is None:
        mod = types.ModuleType(name)
        mod.__path__ = [] if path is None else [str(path)]
        mod.__package__ = name
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)
    return mod


def load_stub_modules(fresh: bool = False) -> types.SimpleNamespace:
    """Import (or reuse) the stub files under the dynamic package; returns the modules and the package name."""
    salt = f"fresh-{next(_fresh_counter)}" if fresh else ""
    package = f"{PACKAGE_PREFIX}.{_revision(salt)}"
    parts = package.split(".")
    for i in range(1, len(parts)):
        _ensure_package(".".join(parts[:i]))
    pkg = _ensure_package(package, STUB_DIR)

    mods = {}
    for name in MODULE_FILES:
        full = f"{package}.{name}"
        mod = sys.modules.get(full)
        if mod is None:
            spec = importlib.util.spec_from_file_location(full, STUB_DIR / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[full] = mod
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                sys.modules.pop(full, None)
                raise
            setattr(pkg, name, mod)
        mods[name] = mod
    return types.SimpleNamespace(package=package, **mods)


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
