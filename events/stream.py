"""The JSONL event stream: line 1 is the `SessionHeader` (`"kind": "header"`), then one `CallEvent` per line
(`"kind": "call"`), written when the call returns (or raises) and flushed at once, so a crash keeps every event
before it; the last line is the `SessionEnd` (`"kind": "end"`). `read_events` validates every line, names the
first bad one, and checks the end record's counts against what it read.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..common.jsonable import jsonable
from ..errors import EventFileError
from .lanes import PHASES
from .schema import ENDINGS, SCHEMA, SCHEMA_VERSION, CallEvent, SessionEnd, SessionHeader, TensorMeta

Record = SessionHeader | CallEvent | SessionEnd
_KINDS = {SessionHeader: "header", CallEvent: "call", SessionEnd: "end"}


class EventStream(NamedTuple):
    header: SessionHeader
    events: list[CallEvent]
    end: SessionEnd | None  # None: the stream was cut (the run was killed, or the file truncated)


def _metas(metas: tuple[TensorMeta, ...]) -> list[dict[str, Any]]:
    return [{"name": m.name, "shape": list(m.shape), "dtype": m.dtype, "device": m.device} for m in metas]


def _call_dict(e: CallEvent) -> dict[str, Any]:
    """`jsonable(e)` for the hot path: the same keys in the same order, built directly (lanes hold JSON values)."""
    return {"session": e.session, "seq": e.seq, "step": e.step, "phase": e.phase, "address": e.address,
            "class_name": e.class_name, "call_index": e.call_index,
            "parent": None if e.parent is None else list(e.parent), "role": e.role, "stage": e.stage, "lane": e.lane,
            "inputs": _metas(e.inputs), "outputs": _metas(e.outputs), "device": e.device, "error": e.error}


def dump_line(obj: Record) -> str:
    data = _call_dict(obj) if type(obj) is CallEvent else jsonable(obj)
    data["kind"] = _KINDS[type(obj)]
    return json.dumps(data, separators=(",", ":"))  # field and lane order kept as written


class EventWriter:
    """Writes one session's stream: `open()` truncates the file and writes the header; one flushed line per event."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: IO[str] | None = None

    def open(self, header: SessionHeader) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("w", encoding="utf-8")
        self.write(header)

    def write(self, obj: Record) -> None:
        if self._fh is None:
            raise EventFileError(f"event file {self.path} is not open")
        self._fh.write(dump_line(obj) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


_CALL_FIELDS = {f.name for f in dataclasses.fields(CallEvent)}
_REQUIRED = _CALL_FIELDS - {"lane", "inputs", "outputs", "device", "error"}


def _tensor_metas(raw: Any, where: str) -> tuple[TensorMeta, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{where} must be a list")
    out = []
    for t in raw:
        if not isinstance(t, dict) or set(t) != {"name", "shape", "dtype", "device"}:
            raise ValueError(f"{where} entries need exactly name, shape, dtype, device; got {t!r}")
        out.append(TensorMeta(str(t["name"]), tuple(int(d) for d in t["shape"]), str(t["dtype"]), str(t["device"])))
    return tuple(out)


def _event_from_dict(data: dict[str, Any]) -> CallEvent:
    missing = _REQUIRED - set(data)
    if missing:
        raise ValueError(f"missing fields {sorted(missing)}")
    unknown = set(data) - _CALL_FIELDS - {"kind"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    if data["phase"] not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {data['phase']!r}")
    for name in ("seq", "step", "call_index"):
        if type(data[name]) is not int or data[name] < (1 if name == "call_index" else 0):
            raise ValueError(f"{name} must be a non-negative int (call_index >= 1), got {data[name]!r}")
    parent = data["parent"]
    if parent is not None:
        if not (isinstance(parent, list) and len(parent) == 2 and type(parent[1]) is int):
            raise ValueError(f"parent must be null or [address, call_index], got {parent!r}")
        parent = (str(parent[0]), parent[1])
    return CallEvent(
        session=str(data["session"]), seq=data["seq"], step=data["step"], phase=data["phase"],
        address=str(data["address"]), class_name=str(data["class_name"]), call_index=data["call_index"],
        parent=parent, role=str(data["role"]), stage=data["stage"], lane=dict(data.get("lane") or {}),
        inputs=_tensor_metas(data.get("inputs", []), "inputs"),
        outputs=_tensor_metas(data.get("outputs", []), "outputs"),
        device=data.get("device"), error=data.get("error"),
    )


def _header_from_dict(data: dict[str, Any], where: str) -> SessionHeader:
    if data.get("kind") != "header" or data.get("schema") != SCHEMA:
        raise EventFileError(f"{where}: first line must be a {SCHEMA} header")
    if data.get("version") != SCHEMA_VERSION:
        raise EventFileError(f"{where}: schema version {data.get('version')!r}, this loopmeta reads version "
                             f"{SCHEMA_VERSION}")
    sizes, step_role = data.get("container_sizes", {}), data.get("step_role")
    if not isinstance(sizes, dict) or not all(type(v) is int for v in sizes.values()):
        raise EventFileError(f"{where}: bad header: container_sizes must map containers to ints, got {sizes!r}")
    if step_role is not None and not isinstance(step_role, str):
        raise EventFileError(f"{where}: bad header: step_role must be a string or null, got {step_role!r}")
    try:
        return SessionHeader(session=str(data["session"]), config=str(data["config"]),
                             model_class=str(data["model_class"]), versions=dict(data["versions"]),
                             container_sizes=dict(sizes), step_role=step_role)
    except (KeyError, TypeError, ValueError) as exc:
        raise EventFileError(f"{where}: bad header ({exc!r})") from None


def _end_from_dict(data: dict[str, Any], where: str) -> SessionEnd:
    fields = {f.name for f in dataclasses.fields(SessionEnd)}
    unknown = set(data) - fields - {"kind"}
    if unknown or not {"session", "events", "steps", "ended"} <= set(data):
        raise EventFileError(f"{where}: bad end record: needs session, events, steps, ended; unknown keys "
                             f"{sorted(unknown)}")
    if data["ended"] not in ENDINGS or type(data["events"]) is not int or type(data["steps"]) is not int:
        raise EventFileError(f"{where}: bad end record: ended must be one of {ENDINGS} and the counts ints")
    faults = data.get("faults", [])
    if not isinstance(faults, list) or not all(isinstance(f, str) for f in faults):
        raise EventFileError(f"{where}: bad end record: faults must be a list of strings")
    return SessionEnd(**{k: v for k, v in data.items() if k in fields and k != "faults"}, faults=tuple(faults))


def _check_counts(path: Path, header: SessionHeader, events: list[CallEvent], end: SessionEnd) -> None:
    """The end record counts what was recorded: fewer events or steps in the file means the file lost them."""
    steps = len({e.step for e in events if e.role == header.step_role}) if header.step_role else 0
    if (end.events, end.steps) != (len(events), steps):
        raise EventFileError(f"{path}: the end record counts {end.events} events in {end.steps} steps, the file holds "
                             f"{len(events)} events in {steps} steps: the stream lost events; no report is made")


def read_events(path: str | Path) -> EventStream:
    """Read and validate an event file; raise `EventFileError` naming the line of the first problem."""
    path = Path(path)
    events: list[CallEvent] = []
    header: SessionHeader | None = None
    end: SessionEnd | None = None
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                data = _line(line, where)
                if header is None:
                    header = _header_from_dict(data, where)
                elif end is not None:
                    raise EventFileError(f"{where}: a line after the end record")
                elif data.get("kind") == "end":
                    end = _end_from_dict(data, where)
                else:
                    events.append(_call(data, where, header))
    except UnicodeDecodeError as exc:
        raise EventFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): not a loopmeta event "
                             "stream") from None
    except OSError as exc:
        raise EventFileError(f"cannot read event file {path}: {exc}") from None
    if header is None:
        raise EventFileError(f"{path}: empty file, no {SCHEMA} header")
    if end is not None:
        _check_counts(path, header, events, end)
    return EventStream(header, events, end)


def _line(line: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EventFileError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise EventFileError(f"{where}: expected a JSON object")
    return data


def _call(data: dict[str, Any], where: str, header: SessionHeader) -> CallEvent:
    if data.get("kind") != "call":
        raise EventFileError(f"{where}: expected kind 'call', got {data.get('kind')!r}")
    try:
        event = _event_from_dict(data)
    except (ValueError, TypeError) as exc:
        raise EventFileError(f"{where}: {exc}") from None
    if event.session != header.session:
        raise EventFileError(f"{where}: session {event.session!r} != header {header.session!r}")
    return event
