"""The recorder: numbers calls, tracks steps and parent calls, and turns each finished call into a `CallEvent`.

Invariants: call indices count per address over the session; the parent stack lives in a `ContextVar`, so
threads and tasks never see each other's open calls; a step starts with each call of the config's step target
(the model's top-level forward); calls before the first step belong to step 0 (lane `before_first_forward`).
Wrappers only read shapes, dtypes, devices and Python values.
"""

from __future__ import annotations

import contextvars
import inspect
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .events import CallEvent, EventWriter, SessionHeader, TensorMeta


def tensor_metas(items: Any, prefix: str = "") -> tuple[TensorMeta, ...]:
    """Metadata of the tensors in a value, in order: lists, tuples and mappings (ModelOutput too) are searched
    depth-first, other objects (a KV cache) are not; the same rule TorchLens uses for its call summaries."""
    import torch

    out: list[TensorMeta] = []

    def visit(value: Any, name: str, depth: int) -> None:
        if isinstance(value, torch.Tensor):
            out.append(TensorMeta(name, tuple(value.shape), str(value.dtype).removeprefix("torch."),
                                  str(value.device)))
        elif depth < 16 and isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, f"{name}.{i}" if name else str(i), depth + 1)
        elif depth < 16 and isinstance(value, dict):
            for k, v in value.items():
                visit(v, f"{name}.{k}" if name else str(k), depth + 1)

    visit(items, prefix, 0)
    return tuple(out)


_SIGNATURES: dict[Any, list[str]] = {}


def _param_names(fn: Callable[..., Any]) -> list[str]:
    key = getattr(fn, "__func__", fn)
    if key not in _SIGNATURES:
        try:
            _SIGNATURES[key] = [p.name for p in inspect.signature(fn).parameters.values()
                                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            _SIGNATURES[key] = []
    return _SIGNATURES[key]


@dataclass
class Call:
    """One running call, handed to extractors: `lane` is filled by `on_enter`, then by `on_exit`."""

    address: str
    index: int
    seq: int
    step: int
    phase: str
    role: str
    stage: str | None
    module: Any
    forward: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    parent: Call | None
    state: dict[str, Any]
    lane: dict[str, Any] = field(default_factory=dict)
    children: list[CallEvent] = field(default_factory=list)
    inputs: tuple[TensorMeta, ...] = ()  # read when the call starts, before the forward can change its inputs

    def arg(self, name: str, default: Any = None) -> Any:
        """An argument by name, whether it was passed by keyword or by position."""
        if name in self.kwargs:
            return self.kwargs[name]
        names = _param_names(self.forward)
        if name in names and names.index(name) < len(self.args):
            return self.args[names.index(name)]
        return default

    def calls_before_in_parent(self) -> int:
        """How many calls of this address the parent call made before this one (0 for the first)."""
        if self.parent is None:
            return 0
        return sum(1 for c in self.parent.children if c.address == self.address)


class Recorder:
    """Collects the events of one session, in memory and (optionally) in a JSONL file."""

    def __init__(self, config_name: str, model_class: str, events_path: str | Path | None = None,
                 containers: dict[str, int] | None = None):
        from importlib import metadata

        versions = {}
        for package in ("torch", "transformers"):
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                pass
        self.session = uuid.uuid4().hex[:12]
        self.header = SessionHeader(session=self.session, config=config_name, model_class=model_class,
                                    versions=versions, containers=dict(containers or {}))
        self.events: list[CallEvent] = []
        self.state: dict[str, Any] = {}
        self._writer = EventWriter(events_path, self.header) if events_path else None
        self._counts: Counter[str] = Counter()
        self._seq = 0
        self.steps = 0
        self._phase = "prefill"
        self._stack: contextvars.ContextVar[Call | None] = contextvars.ContextVar(f"loopmeta_{self.session}",
                                                                                default=None)

    def current(self) -> Call | None:
        return self._stack.get()

    def enter(self, address: str, module: Any, forward: Callable[..., Any], args: tuple, kwargs: dict,
              target: Any, on_enter: Callable | None) -> tuple[Call, contextvars.Token]:
        parent = self._stack.get()
        self._counts[address] += 1
        if target.step:
            step = self.steps
            self.steps += 1
        else:
            step = max(self.steps - 1, 0)
        call = Call(address=address, index=self._counts[address], seq=self._seq, step=step, phase=self._phase,
                    role=target.role, stage=target.stage, module=module, forward=forward, args=args,
                    kwargs=kwargs, parent=parent, state=self.state,
                    inputs=tensor_metas(args) + tensor_metas(kwargs))
        self._seq += 1
        if self.steps == 0:
            call.lane["before_first_forward"] = True
        self._extract(call, on_enter)
        if target.step:
            phase = call.lane.get("phase")
            if phase not in ("prefill", "decode"):
                call.lane.setdefault("extract_error", f"{address}:{call.index}: the step extractor gave phase {phase!r}")
                phase = "prefill" if step == 0 else "decode"
            self._phase = call.phase = phase
        return call, self._stack.set(call)

    def exit(self, call: Call, token: contextvars.Token, result: Any, error: BaseException | None,
             on_exit: Callable | None) -> None:
        self._stack.reset(token)
        if error is None:
            self._extract(call, on_exit, result)
        inputs = call.inputs
        event = CallEvent(
            session=self.session, seq=call.seq, step=call.step, phase=call.phase, address=call.address,
            class_name=type(call.module).__name__, call_index=call.index,
            parent=(call.parent.address, call.parent.index) if call.parent else None, role=call.role,
            stage=call.stage, lane=call.lane, inputs=inputs,
            outputs=tensor_metas(result) if error is None else (),
            device=inputs[0].device if inputs else None,
            error=None if error is None else type(error).__name__,
        )
        self.events.append(event)
        if call.parent is not None:
            call.parent.children.append(event)
        if self._writer:
            self._writer.write(event)

    def _extract(self, call: Call, fn: Callable | None, *result: Any) -> None:
        if fn is None:
            return
        try:
            call.lane.update(fn(call, *result) or {})
        except Exception as exc:  # an extractor bug must not break the user's inference; the merge refuses it
            call.lane["extract_error"] = f"{call.address}:{call.index}: {fn.__name__} raised {exc!r}"

    def close(self) -> None:
        if self._writer:
            self._writer.close()
