"""Model configs: declarative TOML files mapping abstract roles to module-address patterns.

A config names the root classes it applies to, version pins, an optional adapter module (extractor functions) and
one `[[targets]]` table per role. Patterns are addresses rooted at the object the user instruments, with `[%d]` for
one integer index: `model.layers[%d].mlp` matches `model.layers.3.mlp`; `""` is the root. The format is documented
in `model_configs/README.md`.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "model_configs"


class ConfigError(ValueError):
    """A model config is malformed, unknown or does not fit the model (the message names config and target)."""


@dataclass(frozen=True)
class Target:
    role: str
    pattern: str
    stage: str | None = None
    classes: tuple[str, ...] = ()
    required: bool = True
    step: bool = False
    on_enter: str | None = None
    on_exit: str | None = None
    axis: str | None = None
    select: bool = False

    @cached_property
    def regex(self) -> re.Pattern[str]:
        parts = [re.escape(p) for p in self.pattern.split("[%d]")]
        return re.compile(r"\.(\d+)".join(parts) + r"\Z")

    def matches(self, address: str, class_name: str) -> bool:
        return bool(self.regex.match(address)) and (not self.classes or class_name in self.classes)


@dataclass(frozen=True)
class Rebind:
    """For the TorchLens trace only: replace `name` in the Python module defining the class of node `module_of`
    by the adapter function `replacement` (TorchScript helpers are opaque to TorchLens)."""

    module_of: str
    name: str
    replacement: str


@dataclass(frozen=True)
class ModelConfig:
    name: str
    description: str
    source: Path
    root_classes: tuple[str, ...]
    requires: dict[str, str]
    adapter: str | None
    stages: tuple[str, ...]
    targets: tuple[Target, ...]
    rebind: tuple[Rebind, ...] = ()

    @cached_property
    def adapter_module(self) -> ModuleType | None:
        if self.adapter is None:
            return None
        path = self.source.parent / f"{self.adapter}.py"
        if not path.is_file():
            raise ConfigError(f"config {self.name!r}: adapter file {path.name} not found beside {self.source.name}")
        mod_name = f"loopmeta_adapter_{self.name}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
        return module

    def extractor(self, name: str | None) -> Callable[..., dict[str, Any]] | None:
        if name is None:
            return None
        fn = getattr(self.adapter_module, name, None) if self.adapter_module else None
        if not callable(fn):
            raise ConfigError(f"config {self.name!r}: extractor {name!r} is not a function of adapter {self.adapter!r}")
        return fn

    @property
    def step_target(self) -> Target | None:
        return next((t for t in self.targets if t.step), None)


_TARGET_KEYS = {"role", "pattern", "stage", "classes", "required", "step", "on_enter", "on_exit", "axis", "select"}


def _parse(path: Path) -> ModelConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read model config {path}: {exc}") from None
    name = raw.get("name") or path.stem

    def check(where: str, value: Any, kind: type | tuple[type, ...], items: type | None = None) -> None:
        bad = not isinstance(value, kind) or (items is not None and not all(isinstance(v, items) for v in value))
        if bad:
            raise ConfigError(f"config {name!r}: {where} must be {getattr(kind, '__name__', kind)}"
                              + (f" of {items.__name__}" if items else "") + f", got {value!r}")

    for key in ("root_classes", "stages"):
        check(key, raw.get(key, []), list, str)
    check("requires", raw.get("requires", {}), dict, None)
    targets = []
    for i, t in enumerate(raw.get("targets", [])):
        unknown = set(t) - _TARGET_KEYS
        if unknown or "role" not in t or "pattern" not in t:
            raise ConfigError(f"config {name!r} target #{i}: needs role and pattern; unknown keys {sorted(unknown)}")
        for key, kind in (("role", str), ("pattern", str), ("stage", str), ("required", bool), ("step", bool),
                          ("on_enter", str), ("on_exit", str), ("axis", str), ("select", bool)):
            if key in t:
                check(f"target #{i} {key}", t[key], kind)
        if "classes" in t:
            check(f"target #{i} classes", t["classes"], list, str)
        targets.append(Target(role=t["role"], pattern=t["pattern"], stage=t.get("stage"),
                              classes=tuple(t.get("classes", ())), required=t.get("required", True),
                              step=t.get("step", False), on_enter=t.get("on_enter"), on_exit=t.get("on_exit"),
                              axis=t.get("axis"), select=t.get("select", False)))
    if not targets:
        raise ConfigError(f"config {name!r} ({path}) has no [[targets]]")
    if sum(t.step for t in targets) > 1:
        raise ConfigError(f"config {name!r}: at most one target may have step = true")
    stages = tuple(raw.get("stages", ()))
    for t in targets:
        if t.stage is not None and t.stage not in stages:
            raise ConfigError(f"config {name!r}: role {t.role!r} names stage {t.stage!r}, not in stages {stages}")
    config = ModelConfig(name=name, description=raw.get("description", ""), source=path,
                         root_classes=tuple(raw.get("root_classes", ())), requires=dict(raw.get("requires", {})),
                         adapter=raw.get("adapter"), stages=stages, targets=tuple(targets),
                         rebind=tuple(Rebind(**r) for r in raw.get("trace", {}).get("rebind", [])))
    for t in targets:  # fail at load time, not in the middle of a forward
        config.extractor(t.on_enter)
        config.extractor(t.on_exit)
    for r in config.rebind:
        config.extractor(r.replacement)
    return config


def builtin_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.toml"))}


def load_config(spec: str | Path) -> ModelConfig:
    """Load a config by built-in name (`deepseek_ocr_v1`) or by path to a TOML file."""
    path = Path(spec)
    if path.suffix == ".toml":
        if not path.is_file():
            raise ConfigError(f"model config file {path} does not exist")
        return _parse(path)
    known = builtin_configs()
    if str(spec) not in known:
        raise ConfigError(f"unknown model config {spec!r}; built-in configs: {', '.join(known)} (or pass a .toml path)")
    return _parse(known[str(spec)])


def detect_config(model: Any) -> ModelConfig:
    """Pick the built-in config whose `root_classes` contains the model's class name."""
    cls = type(model).__name__
    for name in builtin_configs():
        config = load_config(name)
        if cls in config.root_classes:
            return config
    raise ConfigError(f"no built-in model config for a model of class {cls!r}; built-in configs cover "
                      + "; ".join(f"{n}: {', '.join(load_config(n).root_classes)}" for n in builtin_configs())
                      + ". Pass config=<name or .toml path> (run_traced.py --config), write a config for it "
                      "(model_configs/README.md), or use the config-free structural report.")
