"""The recorder: numbers calls, tracks steps and parent calls, and turns each finished call into a row of the
session's `EventTable` (events/table.py).

Invariants: call indices count per address over the session; the parent stack lives in a `ContextVar`, so
threads and tasks never see each other's open calls; a step starts with each call of the config's step target
(the model's top-level forward); calls before the first step belong to step 0 (lane `before_first_forward`).
Wrappers only read shapes, dtypes, devices and Python values; a lane value an extractor hands over as a
`lanes.Later` is read, under the recorder's lock, when a call outside any other returns (a step) or a step starts,
before the calls are written, or when the table is read. Nothing the recorder does reaches the user's forward:
an extractor that raises or returns something that is not plain JSON marks its event (`extract_error`); a failed
write of the events file stops the file, keeps every event in memory and warns once (`write_failed`); any other
internal failure is kept in `faults`, and a session with faults gets no report.
Each row carries the recording thread and the call's start and end (`time.perf_counter_ns` from the session's clock
origin, taken when the recorder is made): the start just before the forward runs, the end as soon as it returns, so
on one thread a call's interval lies inside its parent's.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

from ..common.jsonable import NotPlain, plain_copy
from ..common.tensors import call_metas, result_metas
from ..events import lanes
from ..events.schema import CallEvent, SessionEnd, SessionHeader, TensorMeta
from ..events.stream import EventWriter
from ..events.table import NO_PARENT, ROW, EventTable, NodeInfo, ThreadInfo
from .call import Call

FLUSH_ROWS = 4096
"""Finished calls wait in a pending list: the events file gets them when a step starts and when a call outside any
other (a step) ends, so a kill -9 loses at most the calls still running and the finished calls inside them; the
table gets them once this many have been read (`Later` values) and whenever it is read."""
_PHASE_CODES = {phase: i for i, phase in enumerate(lanes.PHASES)}
_now = time.perf_counter_ns
_thread = threading.get_ident
_LANE = ROW.index("lane")


class _Deferred(NamedTuple):
    """A pending row's lane until its `Later` values are read: where the call is (for messages), and its lane."""

    where: str
    lane: dict[str, Any]


def _plain(value: Any) -> bool:
    try:
        plain_copy(value)
    except (NotPlain, RecursionError):  # RecursionError: circular or deeper than Python recurses
        return False
    return True


def _copied(value: Any) -> Any:
    """A copy of a plain JSON value, or the value itself when it is not one (for `_intern` to refuse)."""
    try:
        return plain_copy(value)
    except (NotPlain, RecursionError):
        return value


class Recorder:
    """Collects the calls of one session in an `EventTable` and, when `events_path` is given, in the events file.

    Per call it reads shapes and runs the extractors; rows wait in a short pending list that moves to the table (and
    the file) as `FLUSH_ROWS` says."""

    def __init__(self, header: SessionHeader, nodes: list[NodeInfo], events_path: str | Path | None = None,
                 options: dict[str, Any] | None = None):
        self._origin = _now()
        self.header = dataclasses.replace(header, time_origin_ns=time.time_ns())
        self.session = header.session
        self._table = EventTable(header.session, timed=True)
        self._table.nodes.extend(nodes)
        self._threads: dict[int, int] = {}  # threading.get_ident() -> index into the table's threads
        self.faults: list[str] = []
        self.write_failed: str | None = None
        self.end: SessionEnd | None = None
        self.state: dict[str, Any] = {"options": dict(options or {})}
        self.steps = 0
        self._writer = EventWriter(events_path) if events_path else None
        self._counts = [0] * len(nodes)
        self._seq = 0
        self._phase = lanes.PREFILL
        self._pending: list[tuple] = []
        self._written = 0  # pending calls already in the events file (a prefix)
        self._resolved = 0  # pending calls whose `Later` values are read (a prefix)
        self._resolving: int | None = None  # the thread reading `Later` values
        self._tensor_ids: dict[tuple, int] = {}
        self._lock = threading.RLock()  # `_resolve` interns under it
        self._stack: contextvars.ContextVar[Call | None] = contextvars.ContextVar(f"loopmeta_{self.session}",
                                                                                default=None)
        if self._writer:
            self._writer.open(self.header, nodes)

    @property
    def table(self) -> EventTable:
        """Every call recorded so far (pending calls are moved in first)."""
        if self._pending:
            self.flush()
        return self._table

    @property
    def events(self) -> list[CallEvent]:
        """Every call recorded so far as `CallEvent`s, in the order they finished (built on each access)."""
        return list(self.table.events())

    @property
    def calls(self) -> int:
        """Calls entered so far (a plain int: safe to read from another thread, e.g. a progress display)."""
        return self._seq

    def current(self) -> Call | None:
        return self._stack.get()

    def enter(self, binding: Any, module: Any, forward: Callable[..., Any], args: tuple,
              kwargs: dict) -> tuple[Call, contextvars.Token]:
        """Start a call of `binding` (address, target, bound extractors, node); the caller must `exit` it. A call
        that a `Later` read makes is refused (the engine runs it unrecorded and keeps the fault)."""
        if self._resolving == _thread():
            raise RuntimeError("a lane's Later read called an instrumented module: reads must only read values")
        target = binding.target
        if target.step:  # first: an interrupted read there spends no call index
            self._write_pending()
        counts, node = self._counts, binding.node
        counts[node] = index = counts[node] + 1
        if target.step:
            step = self.steps
            self.steps += 1
        else:
            step = self.steps - 1 if self.steps else 0
        call = Call(binding, index, self._seq, step, self._phase, module, forward, args, kwargs, self._stack.get(),
                    self.state, call_metas(args, kwargs))
        self._seq += 1
        if not self.steps:
            call.lane[lanes.BEFORE_FIRST_FORWARD] = True
        if binding.on_enter is not None:
            self._extract(call, binding.on_enter)
        if target.step:
            phase = call.lane.get(lanes.PHASE)
            if phase not in _PHASE_CODES:
                call.lane.setdefault(lanes.EXTRACT_ERROR,
                                     f"{call.address}:{call.index}: the step extractor gave phase {phase!r}")
                phase = lanes.PREFILL if step == 0 else lanes.DECODE
            self._phase = call.phase = phase
        call.start = _now() - self._origin
        return call, self._stack.set(call)

    def exit(self, call: Call, token: contextvars.Token, result: Any, error: BaseException | None,
             on_exit: Callable[..., Any] | None) -> None:
        end = _now() - self._origin
        self._stack.reset(token)
        if error is None and on_exit is not None:
            self._extract(call, on_exit, result)
        parent = call.parent
        try:
            thread = self._threads[_thread()]
        except KeyError:
            thread = self._thread_id()
        row = (call.seq, call.step, _PHASE_CODES[call.phase], call.binding.node, call.index,
               NO_PARENT if parent is None else parent.seq, self._lane_id(call), self._tensors_id(call.inputs),
               self._tensors_id(result_metas(result) if error is None else ()), thread, call.start, end,
               None if error is None else type(error).__name__)
        call.args, call.kwargs, call.children, call.module, call.forward = (), {}, [], None, None
        pending = self._pending
        pending.append(row)  # atomic; `flush` and `_write_pending` take a prefix of the list under the lock
        if parent is not None:
            parent.children.append(call)
        else:  # a step, or a call outside any: its Later values are read, and it is in the file as it ends
            self._write_pending()
        if self._resolved >= FLUSH_ROWS:
            self.flush(read=False)

    def _lane_id(self, call: Call) -> int | _Deferred:
        """The table's id of the call's lane, or, for a lane holding `Later` values, a `_Deferred` that `_resolve`
        turns into one when the step ends."""
        lane = call.lane
        try:
            found = self._table.lane_id(lane)
        except TypeError:  # an unhashable value (a set, an array): not plain JSON
            found = None
        if found is not None:
            return found
        if any(isinstance(v, lanes.Later) for v in lane.values()):  # the others are copied now, as returned
            return _Deferred(f"{call.address}:{call.index}", {k: v if isinstance(v, lanes.Later) else _copied(v)
                                                               for k, v in lane.items()})
        return self._intern(lane, f"{call.address}:{call.index}")

    def _intern(self, lane: dict[str, Any], where: str) -> int:
        """The id of a lane not in the table yet (or equal to one that is): checked to be plain JSON (one that is not
        loses the offending values and gets `extract_error`) and stored as a copy: an extractor may change or reuse
        what it returned, the table's lanes never change."""
        try:
            lane = plain_copy(lane)
        except (NotPlain, RecursionError):
            bad = sorted((k for k, v in lane.items() if type(k) is not str or not _plain(v)), key=repr)
            lane = {k: plain_copy(v) for k, v in lane.items() if k not in bad}
            lane[lanes.EXTRACT_ERROR] = (f"{where}: the lane is not a dict of plain JSON values (str, int, float, "
                                         f"bool, None, lists, str-keyed dicts): {bad} hold other objects")
        with self._lock:
            return self._table.add_lane(lane)

    def _resolve(self) -> int:
        """Read the `Later` values of the pending calls not looked at yet and give their rows lane ids; returns how
        many pending rows are resolved (a prefix). Call under the lock; while it reads, neither it nor `flush` runs
        again (a read may read the table) and the reading thread records no call (`enter` refuses it). A read that
        raises marks its lane; one interrupted (KeyboardInterrupt) is re-raised once every row is read."""
        pending, start = self._pending, self._resolved
        end = len(pending)
        if self._resolving is not None or start == end:
            return start
        self._resolving, interrupted = _thread(), None
        try:
            for i in range(start, end):
                row = pending[i]
                if type(row[_LANE]) is _Deferred:
                    lane, stop = self._read(row[_LANE])
                    interrupted = interrupted or stop
                    pending[i] = (*row[:_LANE], lane, *row[_LANE + 1:])
            self._resolved = end
        finally:
            self._resolving = None
        if interrupted is not None:
            raise interrupted
        return end

    def _read(self, deferred: _Deferred) -> tuple[int, BaseException | None]:
        """The lane id of a deferred lane, its `Later` values read, and the interruption a read raised, if any."""
        lane: dict[str, Any] = {}
        interrupted = None
        for key, value in deferred.lane.items():
            if isinstance(value, lanes.Later):
                try:
                    value = value.read()
                except BaseException as exc:  # like an extractor's bug: marks the lane, never reaches the forward
                    lane.setdefault(lanes.EXTRACT_ERROR, f"{deferred.where}: reading {key!r} raised {exc!r}")
                    if not isinstance(exc, Exception):
                        interrupted = interrupted or exc
                    continue
            lane[key] = value
        try:
            return self._intern(lane, deferred.where), interrupted
        except Exception as exc:
            return self._intern({lanes.EXTRACT_ERROR: f"{deferred.where}: its lane failed: {exc!r}"}, ""), interrupted

    def _tensors_id(self, key: tuple) -> int:
        found = self._tensor_ids.get(key)
        if found is None:
            metas = tuple(TensorMeta(name, tuple(shape), str(dtype).removeprefix("torch."), str(device))
                          for name, shape, dtype, device in key)
            with self._lock:
                tensors = self._table.tensors
                found = self._tensor_ids.setdefault(key, len(tensors))
                if found == len(tensors):
                    tensors.append(metas)
        return found

    def _thread_id(self) -> int:
        """The table's id of the calling thread, added on its first call."""
        with self._lock:
            threads = self._table.threads
            found = self._threads.setdefault(_thread(), len(threads))
            if found == len(threads):
                threads.append(ThreadInfo(threading.get_native_id(), threading.current_thread().name))
        return found

    def flush(self, read: bool = True) -> None:
        """Move the pending calls to the table (with `read`, their `Later` values read first; else those already
        read), writing those not yet in the events file. Inside a `Later` read (which may read the table) nothing
        moves: the reads' own loop owns the pending calls until it ends."""
        with self._lock:
            if self._resolving is not None:
                return
            try:
                if read:
                    self._resolve()
            finally:  # a read interrupted: what is resolved moves all the same
                pending = self._pending
                rows = pending[:self._resolved]
                if rows:
                    self._table.extend(rows)
                    del pending[:len(rows)]
                    if self._written < len(rows):
                        self._write(rows[self._written:])
                self._written = 0  # it never passes the resolved prefix, which moved
                self._resolved = 0

    def _write_pending(self) -> None:
        """Read the `Later` values of the pending calls, and write those not yet in the events file (they stay
        pending for the table)."""
        with self._lock:
            end = self._resolve()
            if self._writer is not None and self._written < end:
                self._write(self._pending[self._written:end])
                self._written = end

    def _write(self, record: list[tuple] | SessionEnd) -> None:
        """Append to the file; on failure stop writing, keep the memory, warn once (the host never sees it)."""
        if self._writer is None:
            return
        try:
            if isinstance(record, SessionEnd):
                self._writer.write_end(record)
            else:
                self._writer.write_calls(self._table, record)
        except (OSError, ValueError, TypeError) as exc:
            self.write_failed = f"writing {self._writer.path} failed: {exc}"
            warnings.warn(f"loopmeta: {self.write_failed}; the file is incomplete, every event is kept in memory",
                          RuntimeWarning, stacklevel=2)
            with contextlib.suppress(OSError, ValueError):
                self._writer.close()
            self._writer = None

    def _extract(self, call: Call, fn: Callable[..., Any] | None, *result: Any) -> None:
        try:
            lane = fn(call, *result)
            if lane:
                if type(lane) is not dict:
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
        interrupted = None
        try:
            self.flush()
        except Exception as exc:  # closing never fails the host's `with`; the report refuses the faults
            self.fault(f"recording the session's last calls: {exc!r}")
        except BaseException as exc:  # an interrupted read: the session still ends, then the host gets it
            interrupted = exc
        self.end = SessionEnd(session=self.session, events=len(self._table), steps=self.steps, ended=ended,
                              error=error, write_failed=self.write_failed, faults=tuple(self.faults))
        self._write(self.end)
        if self._writer:
            try:
                self._writer.close()
            except OSError as exc:  # the last flush failed: the file may lack its end, and says so by that
                self.write_failed = f"closing {self._writer.path} failed: {exc}"
                warnings.warn(f"loopmeta: {self.write_failed}; every event is kept in memory", RuntimeWarning)
            self._writer = None
        if interrupted is not None:
            raise interrupted
