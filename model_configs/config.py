"""Model configs: declarative TOML files mapping abstract roles to module-address patterns (format in
`model_configs/README.md`).

A config names the root classes it applies to, version pins, an optional adapter module (extractor functions and
the session driver), the stages, one `[[targets]]` table per role and, optionally, how a session is driven
(`[session]`). Patterns are addresses rooted at the object the user instruments, with `[%d]` for one integer index:
`model.layers[%d].mlp` matches `model.layers.3.mlp`; `""` is the root. Loading checks every key's type and that every
function the config names exists in its adapter, so a bad config fails here, never inside a forward. A config may
`include` fragments (`shared/*.toml`): one source of truth for what several model versions share.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from ..errors import ConfigError

BUILTIN_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Target:
    """One role: the modules matching `pattern` (and `classes`), their stage, axis and extractors."""

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
    distinguish: tuple[str, ...] = ()  # lane keys that tell stack members apart (shown where they differ)

    @cached_property
    def regex(self) -> re.Pattern[str]:
        parts = [re.escape(p) for p in self.pattern.split("[%d]")]
        return re.compile(r"\.(\d+)".join(parts) + r"\Z")


@dataclass(frozen=True)
class Rebind:
    """For the TorchLens trace only: replace `name` in the Python module defining the class of node `module_of`
    by the adapter function `replacement` (TorchScript helpers are opaque to TorchLens)."""

    module_of: str
    name: str
    replacement: str


@dataclass(frozen=True)
class PositionTotal:
    """`[[image_positions]]`: a lane total that must equal the image positions of every prefill (the step lane's
    `image_positions`): the sum of lane `key` over the calls of `role` in that step. `what` names the total in the
    report's warning, `hint` says what a mismatch means and what to do."""

    role: str
    key: str
    what: str
    hint: str = ""


@dataclass(frozen=True)
class SessionSpec:
    """How a session of this model version is driven (`[session]`); every function is the adapter's."""

    load: str | None = None  # function(request, config) -> Session: load the model and say how to run it
    probe_method: str | None = None  # root-class method whose first call the TorchLens probe repeats
    probe: str | None = None  # function(args, kwargs, steps) -> (args, kwargs) of a shorter call, or None
    modes: dict[str, dict[str, Any]] = field(default_factory=dict)  # named settings the loader may take
    default_mode: str | None = None
    dtype: str | None = None  # the model dtype the session needs (None: the user's choice, float32 by default)
    prompt: str | None = None  # the prompt when the user gives none
    bounds: str | None = None  # function(table: EventTable) -> dict: the session's named loop bounds (docs/corpus.md)
    per_page: bool = True  # the loaded session runs any page (Session.page): a corpus can run it (docs/corpus.md)


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
    session: SessionSpec = SessionSpec()
    reads_values: tuple[str, ...] = ()  # the tensor values its extractors read, each said in words (else none)
    image_positions: tuple[PositionTotal, ...] = ()  # lane totals each prefill's image positions must equal

    @cached_property
    def adapter_module(self) -> ModuleType | None:
        """Built-in configs import their adapter by package name; a config elsewhere loads `<adapter>.py` beside it."""
        if self.adapter is None:
            return None
        try:
            if self.source.parent == BUILTIN_DIR:
                return importlib.import_module(f"{__package__}.{self.adapter}")
            path = self.source.parent / f"{self.adapter}.py"
            if not path.is_file():
                raise ConfigError(f"config {self.name!r}: adapter file {path.name} not found beside "
                                  f"{self.source.name}")
            spec = importlib.util.spec_from_file_location(f"loopmeta_user_adapter_{self.name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return module
        except ConfigError:
            raise
        except Exception as exc:  # a syntax error, a missing import, an error at import time
            raise ConfigError(f"config {self.name!r}: adapter {self.adapter!r} cannot be imported: "
                              f"{type(exc).__name__}: {exc}") from None

    def function(self, name: str | None) -> Callable[..., Any] | None:
        """The adapter function `name`, else the generic extractor of that name (model_configs/shapes.py); None for
        None; `ConfigError` when neither exists."""
        if name is None:
            return None
        from .shapes import GENERIC

        fn = getattr(self.adapter_module, name, None) if self.adapter_module else None
        fn = fn if callable(fn) else GENERIC.get(name)
        if fn is None:
            raise ConfigError(f"config {self.name!r}: {name!r} is not a function of adapter {self.adapter!r} nor a "
                              f"generic extractor ({', '.join(GENERIC)})")
        return fn

    @property
    def step_target(self) -> Target | None:
        return next((t for t in self.targets if t.step), None)


_TARGET_TYPES: dict[str, type | tuple[type, type]] = {
    "role": str, "pattern": str, "stage": str, "classes": (list, str), "required": bool, "step": bool,
    "on_enter": str, "on_exit": str, "axis": str, "select": bool, "distinguish": (list, str)}
_REBIND_TYPES: dict[str, type] = {"module_of": str, "name": str, "replacement": str}
_TOTAL_TYPES: dict[str, type] = {"role": str, "key": str, "what": str, "hint": str}
_TOP_TYPES: dict[str, Any] = {"name": str, "description": str, "root_classes": (list, str), "adapter": str,
                              "stages": (list, str), "requires": (dict, str), "targets": list, "trace": dict,
                              "session": dict, "reads_values": (list, str), "include": (list, str),
                              "image_positions": list}
_SESSION_TYPES: dict[str, type | tuple[type, type]] = {
    "load": str, "probe_method": str, "probe": str, "modes": (dict, dict), "default_mode": str, "dtype": str,
    "prompt": str, "bounds": str, "per_page": bool}


class _Checker:
    """Type checks of raw TOML values; messages name the config and the key."""

    def __init__(self, name: str):
        self.name = name

    def value(self, where: str, value: Any, kind: type | tuple[type, type]) -> Any:
        outer, inner = kind if isinstance(kind, tuple) else (kind, None)
        items = value.values() if isinstance(value, dict) else value
        if not isinstance(value, outer) or (inner is not None and not all(isinstance(v, inner) for v in items)):
            what = outer.__name__ + (f" of {inner.__name__}" if inner else "")
            raise ConfigError(f"config {self.name!r}: {where} must be {what}, got {value!r}")
        return tuple(value) if outer is list else value

    def table(self, where: str, raw: Any, types: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
        self.value(where, raw, dict)
        unknown = set(raw) - set(types)
        if unknown:
            raise ConfigError(f"config {self.name!r}: {where} has unknown keys {sorted(unknown)}; "
                              f"known: {sorted(types)}")
        missing = [k for k in required if k not in raw]
        if missing:
            raise ConfigError(f"config {self.name!r}: {where} needs {', '.join(missing)}")
        return {k: self.value(f"{where} {k}", v, types[k]) for k, v in raw.items()}


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read model config {path}: {exc}") from None


def _with_includes(raw: dict[str, Any], path: Path, check: _Checker) -> dict[str, Any]:
    """The config with its `include`d fragments (paths relative to its own file) merged in, in order: a fragment's
    lists (its [[targets]]) are appended after the config's own, its tables fill in the keys the config leaves out,
    its other values count only where the config has none. A fragment includes nothing further."""
    merged = {k: v for k, v in raw.items() if k != "include"}
    for name in check.value("include", raw.get("include", []), (list, str)):
        fragment = _read(path.parent / name)
        if "include" in fragment:
            raise ConfigError(f"config {check.name!r}: fragment {name} includes further fragments; only a config "
                              "may include")
        for key, value in fragment.items():
            mine = merged.get(key)
            if isinstance(mine, list) and isinstance(value, list):
                merged[key] = mine + value
            elif isinstance(mine, dict) and isinstance(value, dict):
                merged[key] = {**value, **mine}
            elif key not in merged:
                merged[key] = value
    return merged


def _parse(path: Path) -> ModelConfig:
    raw = _read(path)
    name = raw.get("name") if isinstance(raw.get("name"), str) else path.stem
    check = _Checker(name)
    check.table("the top level", raw, _TOP_TYPES)
    raw = _with_includes(raw, path, check)
    check.table("the top level", raw, _TOP_TYPES)
    targets = [Target(**check.table(f"target #{i}", t, _TARGET_TYPES, ("role", "pattern")))
               for i, t in enumerate(raw.get("targets", []))]
    if not targets:
        raise ConfigError(f"config {name!r} ({path}) has no [[targets]]")
    if sum(t.step for t in targets) != 1:
        raise ConfigError(f"config {name!r}: exactly one target must have step = true (the module whose each call is "
                          f"one step, usually the root: pattern = \"\"); found {sum(t.step for t in targets)}")
    stages = check.value("stages", raw.get("stages", []), (list, str))
    for t in targets:
        if t.stage is not None and t.stage not in stages:
            raise ConfigError(f"config {name!r}: role {t.role!r} names stage {t.stage!r}, not in stages {stages}")
    session = SessionSpec(**check.table("[session]", raw.get("session", {}), _SESSION_TYPES))
    if session.default_mode is not None and session.default_mode not in session.modes:
        raise ConfigError(f"config {name!r}: [session] default_mode {session.default_mode!r} is not one of its "
                          f"modes {sorted(session.modes)}")
    config = ModelConfig(
        name=name, description=raw.get("description", ""), source=path,
        root_classes=check.value("root_classes", raw.get("root_classes", []), (list, str)),
        requires=dict(check.value("requires", raw.get("requires", {}), (dict, str))),
        adapter=raw.get("adapter"), stages=stages, targets=tuple(targets),
        rebind=tuple(Rebind(**check.table(f"[[trace.rebind]] #{i}", r, _REBIND_TYPES, tuple(_REBIND_TYPES)))
                     for i, r in enumerate(check.table("[trace]", raw.get("trace", {}), {"rebind": list})
                                           .get("rebind", []))),
        session=session, reads_values=check.value("reads_values", raw.get("reads_values", []), (list, str)),
        image_positions=tuple(PositionTotal(**check.table(f"[[image_positions]] #{i}", t, _TOTAL_TYPES,
                                                          ("role", "key", "what")))
                              for i, t in enumerate(raw.get("image_positions", []))))
    roles = {t.role for t in targets}
    unknown = [total.role for total in config.image_positions if total.role not in roles]
    if unknown:
        raise ConfigError(f"config {name!r}: [[image_positions]] names roles {unknown} that no target has")
    _check_specifiers(config)
    named = [f for t in targets for f in (t.on_enter, t.on_exit)]
    named += [r.replacement for r in config.rebind] + [session.load, session.probe, session.bounds]
    for fn in named:  # fail at load time, not in the middle of a forward
        config.function(fn)
    return config


def _check_specifiers(config: ModelConfig) -> None:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    for package, spec in config.requires.items():
        try:
            SpecifierSet(spec)
        except InvalidSpecifier:
            raise ConfigError(f"config {config.name!r}: requires {package} = {spec!r} is not a version specifier "
                              "(write e.g. \">=4.45,<4.48\")") from None


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


def config_for_classes(class_names: list[str]) -> ModelConfig | None:
    """The built-in config whose `root_classes` holds one of `class_names`, or None."""
    for name in builtin_configs():
        config = load_config(name)
        if set(class_names) & set(config.root_classes):
            return config
    return None


def detect_config(model: Any) -> ModelConfig:
    """Pick the built-in config whose `root_classes` contains the model's class name."""
    cls = type(model).__name__
    config = config_for_classes([cls])
    if config is None:
        raise ConfigError(
            f"no built-in model config for a model of class {cls!r}; built-in configs cover "
            + "; ".join(f"{n}: {', '.join(load_config(n).root_classes)}" for n in builtin_configs())
            + ". Pass config=<name or .toml path> (run_traced.py --config), write a config for it "
            "(model_configs/README.md), or use the config-free trace_structure().")
    return config
