"""Loads stubbed Hugging Face remote code the way the hub does: under a dynamic package name.

Hugging Face imports remote code as ``transformers_modules.<org>.<repo>.<revision>.<file>``; a patcher therefore has
to find classes from the live model object. ``load_modules`` reproduces that: it imports the given files with
``importlib.util.spec_from_file_location`` under ``<prefix>.<rev>`` (``<rev>`` = first 12 hex digits of a SHA-1
over the files' bytes; a ``salt`` gives a separate copy of every class), registers the parent packages in
``sys.modules`` and lets each file import its siblings relative to that package. Files load in the order given
(siblings before the files that import them); a file may come from another stub's folder, as identical vendor files
do (the same ``modeling_deepseekv2.py`` ships with DeepSeek-OCR v1 and 2).
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
from pathlib import Path


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


def load_modules(prefix: str, files: list[Path], salt: str = "") -> types.SimpleNamespace:
    """Import (or reuse) ``files`` under ``<prefix>.<rev>``; returns the modules by file stem and the package name."""
    h = hashlib.sha1()
    for path in files:
        h.update(path.read_bytes())
    h.update(salt.encode())
    package = f"{prefix}.{h.hexdigest()[:12]}"
    parts = package.split(".")
    for i in range(1, len(parts)):
        _ensure_package(".".join(parts[:i]))
    pkg = _ensure_package(package, files[-1].parent)

    mods = {}
    for path in files:
        full = f"{package}.{path.stem}"
        mod = sys.modules.get(full)
        if mod is None:
            spec = importlib.util.spec_from_file_location(full, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[full] = mod
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                sys.modules.pop(full, None)
                raise
            setattr(pkg, path.stem, mod)
        mods[path.stem] = mod
    return types.SimpleNamespace(package=package, **mods)
