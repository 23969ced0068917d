"""The recorder: numbers calls, tracks steps and parent calls, and turns each finished call into a `CallEvent`.

Invariants: call indices count per address over the session; the parent stack lives in a `ContextVar`, so
threads and tasks never see each other's open calls; a step starts with each call of the config's step target
(the model's top-level forward); calls before the first step belong to step 0 (lane `before_first_forward`).
Wrappers only read shapes, dtypes, devices and Python values. Nothing the recorder does reaches the user's forward:
an extractor that raises or returns something that is not plain JSON marks its event (`extract_error`); a failed
write of the events file stops the file, keeps every event in memory and warns once (`write_failed`); any other
internal failure is kept in `faults`, and a session with faults gets no report.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..events import lanes
from ..events.schema import CallEvent, SessionEnd, SessionHeader, TensorMeta
from ..events.stream import EventWriter
from ..common.tensors import tensor_leaves


def tensor_metas(value: Any) -> tuple[TensorMeta, ...]:
    """Metadata of the tensors in a value, in the order TorchLens summarises them (common/tensors.py)."""
    return tuple(TensorMeta(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), str(t.device))
                 for name, t in tensor_leaves(value))


def json_safe(value: Any) -> bool:
    """True for the plain JSON values a lane may hold: None, str, int, float, bool, lists, tuples, str-keyed dicts."""
    if value is None or type(value) in (str, int, float, bool):
        return True
    if type(value) in (list, tuple):
        return all(json_safe(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and json_safe(v) for k, v in value.items())
    return False


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
    """Collects the events of one session in memory and, when `events_path` is given, in a JSONL file."""

    def __init__(self, header: SessionHeader, events_path: str | Path | None = None,
                 options: dict[str, Any] | None = None):
        self.header = header
        self.session = header.session
        self.events: list[CallEvent] = []
        self.faults: list[str] = []
        self.write_failed: str | None = None
        self.end: SessionEnd | None = None
        self.state: dict[str, Any] = {"options": dict(options or {})}
        self.steps = 0
        self._writer = EventWriter(events_path) if events_path else None
        self._counts: Counter[str] = Counter()
        self._seq = 0
        self._phase = lanes.PREFILL
        self._stack: contextvars.ContextVar[Call | None] = contextvars.ContextVar(f"loopmeta_{self.session}",
                                                                                default=None)
        if self._writer:
            self._writer.open(header)

    def current(self) -> Call | None:
        return self._stack.get()

    def enter(self, binding: Any, module: Any, forward: Callable[..., Any], args: tuple,
              kwargs: dict) -> tuple[Call, contextvars.Token]:
        """Start a call of `binding` (address, target, bound extractors); the caller must `exit` it."""
        target = binding.target
        parent = self._stack.get()
        self._counts[binding.address] += 1
        step = self.steps if target.step else max(self.steps - 1, 0)
        if target.step:
            self.steps += 1
        call = Call(address=binding.address, index=self._counts[binding.address], seq=self._seq, step=step,
                    phase=self._phase, role=target.role, stage=target.stage, module=module, forward=forward,
                    args=args, kwargs=kwargs, parent=parent, state=self.state,
                    inputs=tensor_metas(args) + tensor_metas(kwargs))
        self._seq += 1
        if self.steps == 0:
            call.lane[lanes.BEFORE_FIRST_FORWARD] = True
        self._extract(call, binding.on_enter)
        if target.step:
            phase = call.lane.get(lanes.PHASE)
            if phase not in lanes.PHASES:
                call.lane.setdefault(lanes.EXTRACT_ERROR,
                                     f"{call.address}:{call.index}: the step extractor gave phase {phase!r}")
                phase = lanes.PREFILL if step == 0 else lanes.DECODE
            self._phase = call.phase = phase
        return call, self._stack.set(call)

    def exit(self, call: Call, token: contextvars.Token, result: Any, error: BaseException | None,
             on_exit: Callable[..., Any] | None) -> None:
        self._stack.reset(token)
        if error is None:
            self._extract(call, on_exit, result)
        event = CallEvent(
            session=self.session, seq=call.seq, step=call.step, phase=call.phase, address=call.address,
            class_name=type(call.module).__name__, call_index=call.index,
            parent=(call.parent.address, call.parent.index) if call.parent else None, role=call.role,
            stage=call.stage, lane=call.lane, inputs=call.inputs,
            outputs=tensor_metas(result) if error is None else (),
            device=call.inputs[0].device if call.inputs else None,
            error=None if error is None else type(error).__name__,
        )
        self.events.append(event)
        if call.parent is not None:
            call.parent.children.append(event)
        self._write(event)

    def _write(self, record: CallEvent | SessionEnd) -> None:
        """Append to the file; on failure stop writing, keep the memory, warn once (the host never sees it)."""
        if self._writer is None:
            return
        try:
            self._writer.write(record)
        except (OSError, ValueError) as exc:
            self.write_failed = f"writing {self._writer.path} failed: {exc}"
            warnings.warn(f"loopmeta: {self.write_failed}; the file is incomplete, every event is kept in memory",
                          RuntimeWarning, stacklevel=2)
            with contextlib.suppress(OSError, ValueError):
                self._writer.close()
            self._writer = None

    def _extract(self, call: Call, fn: Callable[..., Any] | None, *result: Any) -> None:
        if fn is None:
            return
        try:
            lane = fn(call, *result) or {}
            if type(lane) is not dict or not json_safe(lane):
                raise TypeError(f"returned {lane!r}, not a dict of plain JSON values (str, int, float, bool, None, "
                                "lists, str-keyed dicts)")
            call.lane.update(lane)
        except Exception as exc:  # an extractor bug must not break the user's inference; the merge refuses it
            call.lane[lanes.EXTRACT_ERROR] = f"{call.address}:{call.index}: {fn.__name__} raised {exc!r}"

    def fault(self, message: str) -> None:
        """Keep a failure to record (once per message); the session's events are incomplete from here on."""
        if message not in self.faults:
            self.faults.append(message)

    def close(self, ended: str = "returned", error: str | None = None) -> None:
        """End the session: keep and write the end record, close the file (idempotent)."""
        if self.end is not None:
            return
        self.end = SessionEnd(session=self.session, events=len(self.events), steps=self.steps, ended=ended,
                              error=error, write_failed=self.write_failed, faults=tuple(self.faults))
        self._write(self.end)
        if self._writer:
            try:
                self._writer.close()
            except OSError as exc:  # the last flush failed: the file may lack its end, and says so by that
                self.write_failed = f"closing {self._writer.path} failed: {exc}"
                warnings.warn(f"loopmeta: {self.write_failed}; every event is kept in memory", RuntimeWarning)
            self._writer = None
