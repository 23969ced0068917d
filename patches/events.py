"""Event schema: one `CallEvent` per call of an instrumented module, streamed as JSONL.

File layout: line 1 is a `SessionHeader` (`"kind": "header"`), every later line a `CallEvent` (`"kind": "call"`),
written when the call returns (or raises), flushed at once so a crash keeps everything before it.

Invariants: `call_index` is 1-based per address over the whole session (TorchLens's `address:k` numbering);
`seq` is the 0-based order in which calls *started*; `parent` is the innermost instrumented call that was running
when this call started; the root module's address is "".

Lane keys set by the engine: `before_first_forward` (the call ran before the session's first step, e.g. image
features computed by `generate()`; it counts in step 0) and `extract_error` (an extractor failed; the merger
refuses such a stream). Keys the merger reads from adapters: `phase` on step calls, and on MoE calls
`experts_hit`, `tokens_per_expert`, `experts_total`, `experts_implementation`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

SCHEMA = "loopmeta.events"
SCHEMA_VERSION = 1

PHASES = ("prefill", "decode")


class EventFileError(ValueError):
    """An event file is not a valid loopmeta event stream (names the file, the line and the problem)."""


@dataclass(frozen=True)
class TensorMeta:
    """Shape, dtype and device of one tensor argument or result; `name` is the keyword or positional index."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    device: str


@dataclass(frozen=True)
class SessionHeader:
    """`containers`: members of each container whose members are a data-dependent selection (the M of k of M)."""

    session: str
    config: str
    model_class: str
    versions: dict[str, str]
    containers: dict[str, int] = field(default_factory=dict)
    schema: str = SCHEMA
    version: int = SCHEMA_VERSION


@dataclass
class CallEvent:
    """One call of one instrumented module (a lane, when the module is called more than once)."""

    session: str
    seq: int
    step: int
    phase: str
    address: str
    class_name: str
    call_index: int
    parent: tuple[str, int] | None
    role: str
    stage: str | None
    lane: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[TensorMeta, ...] = ()
    outputs: tuple[TensorMeta, ...] = ()
    device: str | None = None
    error: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.call_index)


def jsonable(obj: Any) -> Any:
    """Dataclasses, dicts and sequences as plain JSON values (dataclass fields in declaration order)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def dump_line(obj: SessionHeader | CallEvent) -> str:
    data = jsonable(obj)
    data["kind"] = "header" if isinstance(obj, SessionHeader) else "call"
    return json.dumps(data, separators=(",", ":"))  # field and lane order kept as written


class EventWriter:
    """Appends events to a JSONL file, one flushed line each."""

    def __init__(self, path: str | Path, header: SessionHeader):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = self.path.open("w", encoding="utf-8")
        self.write(header)

    def write(self, obj: SessionHeader | CallEvent) -> None:
        if self._fh is None:
            raise RuntimeError(f"event file {self.path} is already closed")
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


def read_events(path: str | Path) -> tuple[SessionHeader, list[CallEvent]]:
    """Read and validate an event file; raise `EventFileError` naming the line of the first problem."""
    path = Path(path)
    events: list[CallEvent] = []
    header: SessionHeader | None = None
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EventFileError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            if not isinstance(data, dict):
                raise EventFileError(f"{path}:{lineno}: expected a JSON object")
            if header is None:
                if data.get("kind") != "header" or data.get("schema") != SCHEMA:
                    raise EventFileError(f"{path}:{lineno}: first line must be a {SCHEMA} header")
                if data.get("version") != SCHEMA_VERSION:
                    raise EventFileError(
                        f"{path}:{lineno}: schema version {data.get('version')!r}, this loopmeta reads "
                        f"version {SCHEMA_VERSION}")
                try:
                    header = SessionHeader(session=str(data["session"]), config=str(data["config"]),
                                           model_class=str(data["model_class"]), versions=dict(data["versions"]),
                                           containers={str(k): int(v) for k, v in data.get("containers", {}).items()})
                except (KeyError, TypeError, ValueError) as exc:
                    raise EventFileError(f"{path}:{lineno}: bad header ({exc!r})") from None
                continue
            if data.get("kind") != "call":
                raise EventFileError(f"{path}:{lineno}: expected kind 'call', got {data.get('kind')!r}")
            try:
                event = _event_from_dict(data)
            except (ValueError, TypeError) as exc:
                raise EventFileError(f"{path}:{lineno}: {exc}") from None
            if event.session != header.session:
                raise EventFileError(f"{path}:{lineno}: session {event.session!r} != header {header.session!r}")
            events.append(event)
    if header is None:
        raise EventFileError(f"{path}: empty file, no {SCHEMA} header")
    return header, events
