"""The patch engine: resolve a config's roles on the live model and wrap the classes' `forward` with wrapt.

Invariants:
- targets are found from the live object (`named_modules()`), so classes imported under a dynamic package name
  (Hugging Face remote code) are found; the module tree and instance identity never change;
- one wrapper per class, shared by every instrumented model (reference-counted); it records only calls of the
  instances bound to a live instrumentation and passes every other call straight through;
- a call that re-enters the same instance (a subclass forward calling `super().forward`) is one call;
- `uninstrument()` puts back the identical attribute objects, also after the forward raised; it is idempotent;
- nothing is patched when any target is missing or a version pin fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import wrapt

from .config import ConfigError, ModelConfig, Target, detect_config, load_config
from .recorder import Recorder

log = logging.getLogger("loopmeta")

_MISSING = object()


class InstrumentationError(RuntimeError):
    """Instrumentation cannot start (already instrumented) or was used wrongly."""


@dataclass
class _ClassPatch:
    cls: type
    original: Any  # the object that was in cls.__dict__["forward"], or _MISSING when forward was inherited
    users: int = 0


_CLASS_PATCHES: dict[type, _ClassPatch] = {}
_BOUND: dict[int, tuple[Any, "Instrumentation", Target]] = {}
_LIVE: dict[int, "Instrumentation"] = {}


def _dispatch(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    entry = _BOUND.get(id(instance))
    if entry is None or entry[0] is not instance:
        return wrapped(*args, **kwargs)
    _, inst, target = entry
    recorder = inst.recorder
    current = recorder.current()
    if current is not None and current.module is instance:
        return wrapped(*args, **kwargs)
    address = inst.addresses[id(instance)]
    config = inst.config
    call, token = recorder.enter(address, instance, wrapped, args, kwargs, target, config.extractor(target.on_enter))
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        recorder.exit(call, token, None, exc, None)
        raise
    recorder.exit(call, token, result, None, config.extractor(target.on_exit))
    return result


def check_pins(config: ModelConfig) -> None:
    from packaging.specifiers import SpecifierSet

    for package, spec in config.requires.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise ConfigError(f"config {config.name!r} needs {package}{spec}, which is not installed") from None
        if not SpecifierSet(spec, prereleases=True).contains(installed):
            raise ConfigError(f"config {config.name!r} is pinned to {package}{spec}; installed {package} is "
                              f"{installed}. Install a matching version, or pass check_versions=False "
                              "(run_traced.py --ignore-version-pins) at your own risk.")


def resolve(model: Any, config: ModelConfig) -> list[tuple[str, Any, Target]]:
    """Match every target against the live module tree; raise `ConfigError` naming what is missing."""
    modules = list(model.named_modules())
    found: list[tuple[str, Any, Target]] = []
    owner: dict[int, str] = {}
    for target in config.targets:
        hits = [(a, m) for a, m in modules if target.regex.match(a)]
        kept = [(a, m) for a, m in hits if not target.classes or type(m).__name__ in target.classes]
        if not kept and target.required:
            if hits:
                seen = sorted({type(m).__name__ for _, m in hits})
                raise ConfigError(f"config {config.name!r}, role {target.role!r}: {target.pattern!r} matches "
                                  f"{len(hits)} modules but of classes {seen}, expected {list(target.classes)}")
            stem = target.pattern.split("[%d]")[0].rsplit(".", 1)[0] if "." in target.pattern else ""
            near = [a for a, _ in modules if a.startswith(stem) and a.count(".") <= stem.count(".") + 1][:8]
            raise ConfigError(f"config {config.name!r}, role {target.role!r}: no module matches "
                              f"{target.pattern!r} in {type(model).__name__}; modules near {stem or '<root>'!r}: "
                              f"{near}")
        for address, module in kept:
            if id(module) in owner:
                raise ConfigError(f"config {config.name!r}: {address!r} matches roles {owner[id(module)]!r} and "
                                  f"{target.role!r}; a module may have one role")
            owner[id(module)] = target.role
            found.append((address, module, target))
    return found


class Instrumentation:
    """One instrumented model: a context manager that yields the `Recorder` and uninstruments on exit."""

    def __init__(self, model: Any, config: ModelConfig, events_path: str | Path | None = None,
                 check_versions: bool = True, options: dict[str, Any] | None = None):
        self.model = model
        self.config = config
        if config.root_classes and type(model).__name__ not in config.root_classes:
            raise ConfigError(f"config {config.name!r} is for root classes {list(config.root_classes)}; "
                              f"got a {type(model).__name__}. Instrument the object users call generate() on.")
        if check_versions:
            check_pins(config)
        if id(model) in _LIVE:
            raise InstrumentationError(f"{type(model).__name__} is already instrumented by config "
                                       f"{_LIVE[id(model)].config.name!r}; uninstrument it first")
        self.bindings = resolve(model, config)
        self.addresses = {id(m): a for a, m, _ in self.bindings}
        shared = [(a, m) for a, m, _ in self.bindings if id(m) in _BOUND]
        if shared:
            other = _BOUND[id(shared[0][1])][1].model
            raise InstrumentationError(f"modules {[a for a, _ in shared[:5]]} are already instrumented as part of "
                                       f"another {type(other).__name__}; a module belongs to one session at a time")
        selected = {a.rpartition(".")[0] for a, _, t in self.bindings if t.select}
        containers = {c: len(list(model.get_submodule(c).children())) for c in sorted(selected)}
        self.recorder = Recorder(config.name, type(model).__name__, events_path, containers)
        self.recorder.state["options"] = dict(options or {})
        self.active = False

    def instrument(self) -> Recorder:
        if self.active or id(self.model) in _LIVE:
            raise InstrumentationError(f"{type(self.model).__name__} is already instrumented; uninstrument it first")
        for _, module, target in self.bindings:
            cls = type(module)
            patch = _CLASS_PATCHES.get(cls)
            if patch is None:
                patch = _CLASS_PATCHES[cls] = _ClassPatch(cls, cls.__dict__.get("forward", _MISSING))
                wrapt.wrap_function_wrapper(cls, "forward", _dispatch)
            patch.users += 1
            _BOUND[id(module)] = (module, self, target)
        _LIVE[id(self.model)] = self
        self.active = True
        log.info("loopmeta: instrumented %s with config %s (%d modules)", type(self.model).__name__,
                 self.config.name, len(self.bindings))
        return self.recorder

    def uninstrument(self) -> None:
        if not self.active:
            return
        for _, module, _ in self.bindings:
            _BOUND.pop(id(module), None)
            patch = _CLASS_PATCHES[type(module)]
            patch.users -= 1
            if patch.users == 0:
                if patch.original is _MISSING:
                    delattr(patch.cls, "forward")
                else:
                    setattr(patch.cls, "forward", patch.original)
                del _CLASS_PATCHES[patch.cls]
        del _LIVE[id(self.model)]
        self.active = False
        self.recorder.close()

    def __enter__(self) -> Recorder:
        return self.recorder

    def __exit__(self, *exc: Any) -> None:
        self.uninstrument()


def instrument(model: Any, config: str | Path | ModelConfig = "auto", *, events: str | Path | None = None,
               check_versions: bool = True, options: dict[str, Any] | None = None) -> Instrumentation:
    """Instrument `model` now; use the result as a context manager (`with instrument(m) as recorder:`) or call
    `uninstrument(m)` later. `config` is "auto" (picked from the model's class), a built-in name or a .toml path.
    `events` is an optional JSONL path that receives every event as it happens; `options` reach the adapter's
    extractors as `call.state["options"]` (e.g. `{"expert_ledger": False}` for DeepSeek-OCR 2)."""
    if isinstance(config, ModelConfig):
        chosen = config
    elif config == "auto":
        chosen = detect_config(model)
        log.warning("loopmeta: config 'auto' picked %r for %s", chosen.name, type(model).__name__)
    else:
        chosen = load_config(config)
    inst = Instrumentation(model, chosen, events, check_versions, options)
    inst.instrument()
    return inst


def uninstrument(model: Any) -> None:
    """Undo `instrument(model)`; a no-op when the model is not instrumented."""
    inst = _LIVE.get(id(model))
    if inst is not None:
        inst.uninstrument()


def is_instrumented(model: Any) -> bool:
    return id(model) in _LIVE
