"""The JSONL events file. Version 5 (written): line 1 is the `SessionHeader` (`"kind": "header"`), then one
`"kind": "node"` line per instrumented module, then batches: the lanes, tensor lists and threads first seen in the
batch (`"kind": "lane"`, `"kind": "tensors"`, `"kind": "thread"`, numbered from 0 in order) and one `"kind": "calls"`
line of rows (events/table.py `ROW`, then `CLOCK`: thread, start and end ns, then the error name or null). The
recorder writes a batch when each step starts and ends and at the end, and flushes it; the last line
is the `SessionEnd` (`"kind": "end"`). A kill -9 loses at most the calls of the batch in progress; the missing end
record (and a last line written in part, which is dropped) says the stream was cut.

Version 4 (the same without threads and `CLOCK`: no call times) and version 3 (one `"kind": "call"` object per
call) are still read, as before. `read_events` validates every line, names the first bad one, and checks the end
record's counts against what it read.
"""

from __future__ import annotations

import dataclasses
import json
import operator
from pathlib import Path
from typing import IO, Any, NamedTuple, Sequence

from ..common.jsonable import jsonable
from ..errors import EventFileError
from .lanes import PHASES
from .schema import ENDINGS, SCHEMA, SCHEMA_VERSION, CallEvent, SessionEnd, SessionHeader, TensorMeta
from . import v3
from .table import NO_PARENT, EventTable, NodeInfo, ThreadInfo

READABLE = (3, 4, SCHEMA_VERSION)
TIMED = 5
"""The first version whose calls carry their thread and times (events/table.py `CLOCK`)."""
_KINDS = {SessionHeader: "header", SessionEnd: "end"}


class EventStream(NamedTuple):
    header: SessionHeader
    table: EventTable
    end: SessionEnd | None  # None: the stream was cut (the run was killed, or the file truncated)

    @property
    def events(self) -> list[CallEvent]:
        """The calls as `CallEvent`s (built on each access)."""
        return list(self.table.events())


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # made once: `json.dumps` with separators makes one per call


def _dumps(data: dict[str, Any]) -> str:
    return _ENCODE(data) + "\n"  # field and lane order kept as written


def dump_line(obj: SessionHeader | SessionEnd) -> str:
    """The line of a header or an end record (the same in versions 3 to 5; a header of version 5 has its
    `time_origin_ns`)."""
    return json.dumps({**jsonable(obj), "kind": _KINDS[type(obj)]}, separators=(",", ":"))


class EventWriter:
    """Writes one session's stream: `open()` truncates the file and writes the header and the nodes; each
    `write_calls` writes what the rows need that was not written yet, then the rows, and flushes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: IO[str] | None = None
        self._lanes = self._tensors = self._threads = 0  # table entries written so far

    def open(self, header: SessionHeader, nodes: Sequence[NodeInfo]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("w", encoding="utf-8")
        self._put(dump_line(header) + "\n" + "".join(_dumps({"kind": "node", "id": i, **dataclasses.asdict(n)})
                                              for i, n in enumerate(nodes)))

    def write_calls(self, table: EventTable, rows: list[tuple]) -> None:
        lanes, tensors, threads = len(table.lanes), len(table.tensors), len(table.threads)  # read once: another
        # thread may add more meanwhile
        lines = [_dumps({"kind": "lane", "id": i, "lane": table.lanes[i]}) for i in range(self._lanes, lanes)]
        lines += [_dumps({"kind": "tensors", "id": i, "tensors": [[m.name, list(m.shape), m.dtype, m.device]
                                                                  for m in table.tensors[i]]})
                  for i in range(self._tensors, tensors)]
        lines += [_dumps({"kind": "thread", "id": i, **dataclasses.asdict(table.threads[i])})
                  for i in range(self._threads, threads)]
        lines.append(_dumps({"kind": "calls", "rows": rows}))
        self._put("".join(lines))
        self._lanes, self._tensors, self._threads = lanes, tensors, threads

    def write_end(self, end: SessionEnd) -> None:
        self._put(dump_line(end) + "\n")

    def _put(self, text: str) -> None:
        if self._fh is None:
            raise EventFileError(f"event file {self.path} is not open")
        self._fh.write(text)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _header_from_dict(data: dict[str, Any], where: str) -> SessionHeader:
    if data.get("kind") != "header" or data.get("schema") != SCHEMA:
        raise EventFileError(f"{where}: first line must be a {SCHEMA} header")
    if data.get("version") not in READABLE:
        raise EventFileError(f"{where}: schema version {data.get('version')!r}, this loopmeta reads versions "
                             f"{', '.join(map(str, READABLE))}")
    sizes, step_role = data.get("container_sizes", {}), data.get("step_role")
    if not isinstance(sizes, dict) or not all(type(v) is int for v in sizes.values()):
        raise EventFileError(f"{where}: bad header: container_sizes must map containers to ints, got {sizes!r}")
    if step_role is not None and not isinstance(step_role, str):
        raise EventFileError(f"{where}: bad header: step_role must be a string or null, got {step_role!r}")
    origin = data.get("time_origin_ns") if data["version"] >= TIMED else None
    if data["version"] >= TIMED and type(origin) is not int:
        raise EventFileError(f"{where}: bad header: time_origin_ns must be an int (Unix ns), got {origin!r}")
    try:
        return SessionHeader(session=str(data["session"]), config=str(data["config"]),
                             model_class=str(data["model_class"]), versions=dict(data["versions"]),
                             container_sizes=dict(sizes), step_role=step_role, time_origin_ns=origin,
                             version=data["version"])
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


def _check_counts(path: Path, header: SessionHeader, table: EventTable, end: SessionEnd) -> None:
    """The end record counts what was recorded: fewer events or steps in the file means the file lost them."""
    step_nodes = {i for i, n in enumerate(table.nodes) if n.role == header.step_role}
    steps = len({s for s, n in zip(table.columns["step"], table.columns["node"]) if n in step_nodes})
    if (end.events, end.steps) != (len(table), steps):
        raise EventFileError(f"{path}: the end record counts {end.events} events in {end.steps} steps, the file holds "
                             f"{len(table)} events in {steps} steps: the stream lost events; no report is made")


def read_events(path: str | Path) -> EventStream:
    """Read and validate an event file; raise `EventFileError` naming the line of the first problem."""
    path = Path(path)
    header: SessionHeader | None = None
    end: SessionEnd | None = None
    body: _Version3 | _Version4 | None = None
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                if not line.endswith("\n") and header is not None and not _parses(line):
                    break  # a last line written in part: the run was killed while writing it, the stream is cut
                data = _line(line, where)
                if header is None:
                    header = _header_from_dict(data, where)
                    body = _Version3(header) if header.version == 3 else _Version4(header)
                elif end is not None:
                    raise EventFileError(f"{where}: a line after the end record")
                elif data.get("kind") == "end":
                    end = _end_from_dict(data, where)
                    if end.session != header.session:
                        raise EventFileError(f"{where}: end record of session {end.session!r}, header "
                                             f"{header.session!r}: the file mixes two sessions")
                else:
                    body.add(data, where, line)
    except UnicodeDecodeError as exc:
        raise EventFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): not a loopmeta event "
                             "stream") from None
    except OSError as exc:
        raise EventFileError(f"cannot read event file {path}: {exc}") from None
    if header is None or body is None:
        raise EventFileError(f"{path}: empty file, no {SCHEMA} header")
    table = body.finish()
    if end is not None:
        _check_counts(path, header, table, end)
    return EventStream(header, table, end)


class _Version3:
    def __init__(self, header: SessionHeader):
        self.header, self.events = header, []

    def add(self, data: dict[str, Any], where: str, line: str) -> None:
        self.events.append(v3.call_from_line(data, where, self.header))

    def finish(self) -> EventTable:
        table = EventTable.from_events(self.events)
        table.session = self.header.session
        return table


_NODE_KEYS = {"kind", "id", "address", "class_name", "role", "stage"}


class _Version4:
    """Definitions and batches of rows into an `EventTable` (versions 4 and 5; a version-5 table is timed). Each
    calls line is checked when read: rows of ints (no booleans), every id naming a definition read before it, every
    value in its range, no call ending before it starts."""

    def __init__(self, header: SessionHeader):
        self.table = EventTable(header.session, timed=header.version >= TIMED)
        self.addresses: set[str] = set()

    def add(self, data: dict[str, Any], where: str, line: str) -> None:
        kind, t = data.get("kind"), self.table
        if kind == "calls":
            self._rows(data.get("rows"), where, "true" in line or "false" in line)
            return
        listing = {"node": t.nodes, "lane": t.lanes, "tensors": t.tensors,
                   **({"thread": t.threads} if t.timed else {})}.get(kind)
        if listing is None:
            raise EventFileError(f"{where}: expected kind node, lane, tensors, {'thread, ' if t.timed else ''}calls or "
                                 f"end, got {kind!r}")
        if data.get("id") != len(listing):
            raise EventFileError(f"{where}: {kind} id {data.get('id')!r}, expected {len(listing)} (ids count up from "
                                 "0)")
        try:
            listing.append(self._definition(kind, data))
        except (KeyError, TypeError, ValueError) as exc:
            raise EventFileError(f"{where}: bad {kind} record ({exc})") from None

    def _definition(self, kind: str, data: dict[str, Any]) -> Any:
        if kind == "node":
            if set(data) != _NODE_KEYS or not all(isinstance(data[k], str) for k in ("address", "class_name", "role")):
                raise ValueError(f"needs exactly {sorted(_NODE_KEYS)}, strings")
            if data["address"] in self.addresses:
                raise ValueError(f"a second node for {data['address'] or '<root>'}")
            self.addresses.add(data["address"])
            if data["stage"] is not None and not isinstance(data["stage"], str):
                raise TypeError("stage must be a string or null")
            return NodeInfo(data["address"], data["class_name"], data["role"], data["stage"])
        if kind == "lane":
            if not isinstance(data["lane"], dict):
                raise TypeError("lane must be an object")
            return data["lane"]
        if kind == "thread":
            if set(data) != {"kind", "id", "native_id", "name"} or type(data["native_id"]) is not int:
                raise ValueError("needs exactly kind, id, native_id (an int), name")
            return ThreadInfo(data["native_id"], str(data["name"]))
        out = []
        for name, shape, dtype, device in data["tensors"]:
            if not all(type(d) is int for d in shape):
                raise TypeError(f"shape {shape!r} must hold ints")
            out.append(TensorMeta(str(name), tuple(shape), str(dtype), str(device)))
        return tuple(out)

    def _rows(self, rows: Any, where: str, maybe_bools: bool) -> None:
        t = self.table
        width = len(t.names) + 1
        if not isinstance(rows, list) or set(map(type, rows)) - {list} or set(map(len, rows)) - {width}:
            raise EventFileError(f"{where}: calls rows must be lists of {width} values ({', '.join(t.names)}, error)")
        if not rows:
            return
        columns = list(zip(*rows))
        if columns[-1].count(None) != len(rows) and not all(isinstance(e, str) for e in columns[-1] if e is not None):
            raise EventFileError(f"{where}: a row's error must be a string or null")
        if maybe_bools and any(type(v) is bool for r in rows for v in r):
            raise EventFileError(f"{where}: calls rows must hold ints, not true or false")
        try:
            t.extend_columns(columns)
        except (TypeError, OverflowError) as exc:
            raise EventFileError(f"{where}: calls rows must hold ints ({exc})") from None
        self._check_ranges(dict(zip(t.names, columns)), where)

    def _check_ranges(self, columns: dict[str, tuple[int, ...]], where: str) -> None:
        """Every value of one line's rows in its range, no call ending before it starts; a few passes in C when all
        are, the first bad row named when one is not."""
        t = self.table
        limits = {"seq": (0, None), "step": (0, None), "phase": (0, len(PHASES)), "node": (0, len(t.nodes)),
                  "call_index": (1, None), "parent": (NO_PARENT, None), "lane": (0, len(t.lanes)),
                  "inputs": (0, len(t.tensors)), "outputs": (0, len(t.tensors))}
        if t.timed:
            limits |= {"thread": (0, len(t.threads)), "start": (0, None), "end": (0, None)}
            if any(map(operator.lt, columns["end"], columns["start"])):
                late = next(i for i, (s, e) in enumerate(zip(columns["start"], columns["end"])) if e < s)
                raise EventFileError(f"{where}: row {late} ends before it starts (end < start)")
        if (all(min(columns[name]) >= low for name, (low, _) in limits.items())
                and all(max(columns[name]) < high for name, (_, high) in limits.items() if high is not None)):
            return
        for name, (low, high) in limits.items():
            values = columns[name]
            if min(values) < low or (high is not None and max(values) >= high):
                row = next(i for i, v in enumerate(values) if v < low or (high is not None and v >= high))
                bound = "" if high is None else high - 1
                raise EventFileError(f"{where}: row {row} has {name} {values[row]}, outside [{low}, {bound}]"
                                     + (f": no {name} record before it" if high is not None and values[row] >= high
                                        else ""))

    def finish(self) -> EventTable:
        return self.table


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _line(line: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EventFileError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise EventFileError(f"{where}: expected a JSON object")
    return data


