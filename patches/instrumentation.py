"""The instrumentation lifecycle: which modules of a model to record, and patching them for one session.

    with Instrumentation(model, "deepseek_ocr2_hf", events="events.jsonl") as recorder:
        model.generate(**inputs, max_new_tokens=8)
    recorder.table  # one row per call of an instrumented module (`recorder.events`: as CallEvents)

Invariants (after OpenTelemetry's instrumentors):
- construction has no side effects: nothing is resolved, opened or patched until `instrument()` (or entering);
- `instrument()` checks everything first (config, root class, version pins, targets, modules free) and patches
  nothing when a check fails; then it opens the events file, binds the modules and returns the `Recorder`;
- `uninstrument()` restores every patched attribute and closes the file with an end record saying how the session
  ended; it is idempotent, also after the forward raised; one `Instrumentation` serves one session: using it again
  raises `InstrumentationError`;
- two live sessions never share a model, a module or an events file; the registries change under one lock.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import uuid
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InstrumentationError
from ..events.schema import SessionHeader
from ..events.table import NodeInfo
from ..model_configs.config import ModelConfig, detect_config, load_config
from . import engine
from .profiling import ProfilingRecorder
from .recorder import Recorder

log = logging.getLogger("loopmeta")

_LIVE: dict[int, "Instrumentation"] = {}  # id(model) -> its live instrumentation
_OPEN_FILES: dict[Path, "Instrumentation"] = {}  # events file -> the live instrumentation writing it


@functools.cache
def installed_version(package: str) -> str | None:
    """The installed version of a package, None when it is not installed; read once per process (reading a
    package's metadata parses a file: milliseconds, most of what instrumenting cost before)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_pins(config: ModelConfig) -> None:
    from packaging.specifiers import SpecifierSet

    for package, spec in config.requires.items():
        installed = installed_version(package)
        if installed is None:
            raise ConfigError(f"config {config.name!r} needs {package}{spec}, which is not installed")
        if not SpecifierSet(spec, prereleases=True).contains(installed):
            raise ConfigError(f"config {config.name!r} is pinned to {package}{spec}; installed {package} is "
                              f"{installed}. Install a matching version, or pass check_versions=False "
                              "(run_traced.py --ignore-version-pins) at your own risk.")


def resolve(model: Any, config: ModelConfig) -> list[engine.Binding]:
    """Match every target against the live module tree; raise `ConfigError` naming what is missing."""
    modules = list(model.named_modules())
    found: list[engine.Binding] = []
    owner: dict[int, str] = {}
    for target in config.targets:
        hits = [(a, m) for a, m in modules if target.regex.match(a)]
        kept = [(a, m) for a, m in hits if not target.classes or type(m).__name__ in target.classes]
        if not kept and target.required:
            raise ConfigError(_missing(config, target, model, modules, hits))
        for address, module in kept:
            if id(module) in owner:
                raise ConfigError(f"config {config.name!r}: {address!r} matches roles {owner[id(module)]!r} and "
                                  f"{target.role!r}; a module may have one role")
            owner[id(module)] = target.role
            found.append(engine.Binding(address, module, target, config.function(target.on_enter),
                                        config.function(target.on_exit), node=len(found)))
    instances = Counter(type(m) for _, m in modules)
    bound = Counter(type(b.module) for b in found)
    return [dataclasses.replace(b, class_level=bound[type(b.module)] == instances[type(b.module)]) for b in found]


def _missing(config: ModelConfig, target: Any, model: Any, modules: list, hits: list) -> str:
    if hits:
        seen = sorted({type(m).__name__ for _, m in hits})
        return (f"config {config.name!r}, role {target.role!r}: {target.pattern!r} matches {len(hits)} modules but of "
                f"classes {seen}, expected {list(target.classes)}")
    stem = target.pattern.split("[%d]")[0].rsplit(".", 1)[0] if "." in target.pattern else ""
    near = [a for a, _ in modules if a.startswith(stem) and a.count(".") <= stem.count(".") + 1][:8]
    return (f"config {config.name!r}, role {target.role!r}: no module matches {target.pattern!r} in "
            f"{type(model).__name__}; modules near {stem or '<root>'!r}: {near}")


def _check_names(model: Any, config: ModelConfig) -> None:
    """The config's names outside its targets exist on this model: the probe method, the rebind modules."""
    method = config.session.probe_method
    if method is not None and not callable(getattr(type(model), method, None)):
        raise ConfigError(f"config {config.name!r}: [session] probe_method {method!r} is not a method of "
                          f"{type(model).__name__}")
    names = {a for a, _ in model.named_modules()}
    for r in config.rebind:
        if r.module_of not in names:
            raise ConfigError(f"config {config.name!r}: [[trace.rebind]] module_of {r.module_of!r} is not a module of "
                              f"{type(model).__name__}")


def _versions(config: ModelConfig) -> dict[str, str]:
    """Installed versions of torch and of every package the config pins."""
    found = {package: installed_version(package) for package in ("torch", *config.requires)}
    return {package: version for package, version in found.items() if version is not None}


def choose_config(model: Any, config: str | Path | ModelConfig) -> ModelConfig:
    """A loaded config as given, the built-in one for the model's class ("auto"), or one loaded by name or path."""
    if isinstance(config, ModelConfig):
        return config
    if config == "auto":
        chosen = detect_config(model)
        log.info("loopmeta: config 'auto' picked %r for %s", chosen.name, type(model).__name__)
        return chosen
    return load_config(config)


class Instrumentation:
    """One model, one session. Use as a context manager (patches on entry, restores on exit) or call
    `instrument()` / `uninstrument()`. `config` is "auto" (by the model's class), a built-in name, a .toml path or a
    loaded `ModelConfig`; `events` an optional JSONL path; `options` reach extractors as `call.state["options"]`;
    `profile`: label every recorded call for torch.profiler (patches/profiling.py; off by default)."""

    def __init__(self, model: Any, config: str | Path | ModelConfig = "auto", *, events: str | Path | None = None,
                 check_versions: bool = True, options: dict[str, Any] | None = None, profile: bool = False):
        self.model = model
        self.profile = profile
        self.requested_config = config
        self.events_path = events
        self.check_versions = check_versions
        self.options = dict(options or {})
        self.config: ModelConfig | None = None
        self.bindings: list[engine.Binding] = []
        self.recorder: Recorder | None = None
        self.state = "new"  # new -> active -> done
        self._events_key: Path | None = None
        self._entered = False

    def instrument(self) -> Recorder:
        with engine.LOCK:
            return self._instrument()

    def _instrument(self) -> Recorder:
        if self.state != "new":
            raise InstrumentationError(
                "this Instrumentation is already " + ("active" if self.state == "active" else "used") + f" (session "
                f"{self.recorder.session}); one Instrumentation serves one session: create a new one")
        if id(self.model) in _LIVE:
            raise InstrumentationError(f"{type(self.model).__name__} is already instrumented by config "
                                       f"{_LIVE[id(self.model)].config.name!r}; uninstrument it first")
        if getattr(self.model, "_compiled_call_impl", None) is not None or hasattr(self.model, "_orig_mod"):
            raise InstrumentationError(f"{type(self.model).__name__} is compiled with torch.compile, whose graphs run "
                                       "without the wrappers: instrument the model before compiling it, or not at all")
        events = Path(self.events_path).resolve() if self.events_path is not None else None
        if events in _OPEN_FILES:
            raise InstrumentationError(f"the events file {self.events_path} is being written by another live session "
                                       f"(of {type(_OPEN_FILES[events].model).__name__}): give each session its own "
                                       "file")
        config = choose_config(self.model, self.requested_config)
        if config.root_classes and type(self.model).__name__ not in config.root_classes:
            raise ConfigError(f"config {config.name!r} is for root classes {list(config.root_classes)}; got a "
                              f"{type(self.model).__name__}. Instrument the root model object.")
        if self.check_versions:
            check_pins(config)
        _check_names(self.model, config)
        bindings = resolve(self.model, config)
        shared = engine.bound_elsewhere([b.module for b in bindings])
        if shared:
            names = [b.address for b in bindings if b.module in shared][:5]
            raise InstrumentationError(f"modules {names} are already instrumented as part of another model; a module "
                                       "belongs to one session at a time")
        selected = sorted({b.address.rpartition(".")[0] for b in bindings if b.target.select})
        header = SessionHeader(session=uuid.uuid4().hex[:12], config=config.name,
                               model_class=type(self.model).__name__, versions=_versions(config),
                               container_sizes={c: len(list(self.model.get_submodule(c).children()))
                                                for c in selected},
                               step_role=config.step_target.role if config.step_target else None)
        try:
            nodes = [NodeInfo(b.address, type(b.module).__name__, b.target.role, b.target.stage) for b in bindings]
            recorder = (ProfilingRecorder if self.profile else Recorder)(header, nodes, self.events_path, self.options)
        except OSError as exc:
            raise InstrumentationError(f"cannot write the events file {self.events_path}: {exc.strerror or exc}. "
                                       "Pass a file path in a folder you can write (--out).") from None
        try:
            engine.bind(bindings, recorder)
        except Exception as exc:  # bind has unbound what it bound: leave nothing behind
            recorder.close("raised", type(exc).__name__)
            raise InstrumentationError(f"patching {type(self.model).__name__} failed, nothing is left patched: "
                                       f"{exc!r}") from exc
        self.config, self.bindings, self.recorder = config, bindings, recorder
        _LIVE[id(self.model)] = self
        if events is not None:
            _OPEN_FILES[events] = self
        self._events_key = events
        self.state = "active"
        log.info("loopmeta: instrumented %s with config %s (%d modules)", type(self.model).__name__, config.name,
                 len(bindings))
        return recorder

    def uninstrument(self, ended: str = "returned", error: str | None = None) -> None:
        """Restore everything, then close the events file with its end record; a no-op unless active."""
        with engine.LOCK:
            if self.state != "active":
                return
            engine.unbind(self.bindings)
            _LIVE.pop(id(self.model), None)
            _OPEN_FILES.pop(self._events_key, None)
            self.state = "done"
        self.recorder.close(ended, error)

    def __enter__(self) -> Recorder:
        """Instrument (or take over the instrumentation `instrument()` started); a second entry is refused."""
        if self._entered and self.state == "active":
            raise InstrumentationError("this Instrumentation is already entered: one `with` block per session")
        recorder = self.recorder if self.state == "active" else self.instrument()
        self._entered = True
        return recorder

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        if exc_type is None:
            self.uninstrument()
        else:
            interrupted = issubclass(exc_type, (KeyboardInterrupt, SystemExit))
            self.uninstrument("interrupted" if interrupted else "raised", exc_type.__name__)


def instrument(model: Any, config: str | Path | ModelConfig = "auto", *, events: str | Path | None = None,
               check_versions: bool = True, options: dict[str, Any] | None = None,
               profile: bool = False) -> Instrumentation:
    """Instrument `model` now and return its `Instrumentation`: use it as a context manager
    (`with instrument(m) as recorder:`) or call `uninstrument(m)` later."""
    inst = Instrumentation(model, config, events=events, check_versions=check_versions, options=options,
                           profile=profile)
    inst.instrument()
    return inst


def uninstrument(model: Any) -> None:
    """Undo `instrument(model)`; a no-op when the model is not instrumented."""
    inst = _LIVE.get(id(model))
    if inst is not None:
        inst.uninstrument()


def is_instrumented(model: Any) -> bool:
    return id(model) in _LIVE
