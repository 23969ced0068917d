"""A session's calls as compact columns: what the recorder keeps, the events file holds and the merge reads.

A call is one row of ints (`ROW`): its start order `seq`, `step`, `phase` (index into `lanes.PHASES`), `node` (index
into `nodes`: address, class, role, stage), `call_index`, `parent` (the seq of the parent call, -1 for none), `lane`
(index into `lanes`), `inputs` and `outputs` (indices into `tensors`), plus an error name for the rare call that
raised. Lanes and tensor lists are interned: a decode step repeats the same few, so a call costs about 80 bytes.
A timed table (what the recorder keeps, version 5) adds the `CLOCK` columns: the thread that ran the call (index into
`threads`) and its start and end, about 24 bytes more.

Invariants: rows are kept in the order calls finished; ids index tables that only grow; `lanes[i]` and
`tensors[i]` are never changed once added (readers share them). `event(i)` rebuilds the `CallEvent` of row i.

    >>> from loopmeta.events.schema import CallEvent
    >>> e = CallEvent("s", 0, 0, "prefill", "lm_head", "Linear", 1, None, "lm_head", None, {"tokens": 3})
    >>> t = EventTable.from_events([e, CallEvent("s", 1, 0, "prefill", "lm_head", "Linear", 2, None, "lm_head",
    ...                                              None, {"tokens": 3})])
    >>> len(t), len(t.lanes), t.event(1) == CallEvent("s", 1, 0, "prefill", "lm_head", "Linear", 2, None,
    ...                                                "lm_head", None, {"tokens": 3})
    (2, 1, True)
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from itertools import compress
from typing import Any, Iterable, Iterator, Sequence

from ..common.jsonable import NotPlain, plain_copy
from ..errors import EventFileError
from .lanes import PHASES
from .schema import CallEvent, TensorMeta

ROW = ("seq", "step", "phase", "node", "call_index", "parent", "lane", "inputs", "outputs")
"""The int columns of a call, in row order (an events-file row adds the error name or null)."""
CLOCK = ("thread", "start", "end")
"""The int columns a timed table adds after `ROW`: `thread` (index into `threads`), and `start` and `end`, the ns of
`time.perf_counter_ns` from the session's clock origin (`SessionHeader.time_origin_ns`) to the call's start and end.
On one thread calls nest: a call starts after and ends before its parent. Never read by the report."""
NO_PARENT = -1
LOST_PARENT = -2
"""A version-3 call whose parent call has no event (the stream was cut inside it)."""


@dataclass(frozen=True)
class NodeInfo:
    """What every call of one instrumented module shares."""

    address: str
    class_name: str
    role: str
    stage: str | None


@dataclass(frozen=True)
class ThreadInfo:
    """A thread that ran recorded calls: its operating-system id (what profilers show as tid) and its name. A thread
    that ends and a later one that Python gives the same ident share one entry (they never overlap in time)."""

    native_id: int
    name: str


def lane_key(lane: dict[str, Any]) -> Any:
    """A hashable key, equal only for lanes equal as JSON (`1`, `1.0` and `true` differ, and so do `0.0` and `-0.0`,
    which compare equal): keys, value types and values, or the `repr` when a value is a float, a list or a dict (exact
    for plain JSON values; key order counts, which only makes two ids for one lane)."""
    types = tuple(map(type, lane.values()))
    if float in types or list in types or dict in types or tuple in types:
        return repr(lane)
    return tuple(lane), types, tuple(lane.values())


class EventTable:
    """The calls of one session in columns, with interned nodes, lanes and tensor lists; `timed`: with the `CLOCK`
    columns and their `threads`."""

    def __init__(self, session: str = "", timed: bool = False) -> None:
        self.session = session
        self.names = ROW + CLOCK if timed else ROW
        self.nodes: list[NodeInfo] = []
        self.threads: list[ThreadInfo] = []
        self.lanes: list[dict[str, Any]] = []
        self.tensors: list[tuple[TensorMeta, ...]] = []
        self.errors: dict[int, str] = {}  # row -> type name of the exception the call raised
        self.lost_parents: dict[int, tuple[str, int]] = {}  # row -> the (address, call) a version-3 event names
        self.columns: dict[str, array] = {name: array("q") for name in self.names}
        self._lane_ids: dict[Any, int] = {}
        self._seq_rows: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self.columns["seq"])

    @property
    def timed(self) -> bool:
        return self.names != ROW

    # --- building ---------------------------------------------------------------------------------------------
    def lane_id(self, lane: dict[str, Any]) -> int | None:
        """The id of a lane equal to `lane` as JSON, or None when there is none yet."""
        return self._lane_ids.get(lane_key(lane))

    def add_lane(self, lane: dict[str, Any]) -> int:
        """The id of `lane`, added (as it is, never changed afterwards) when new."""
        key = lane_key(lane)
        found = self._lane_ids.get(key)
        if found is None:
            found = self._lane_ids[key] = len(self.lanes)
            self.lanes.append(lane)
        return found

    def extend(self, rows: Sequence[Sequence[Any]], first_row: int | None = None) -> None:
        """Append rows of `len(self.names)` ints, each optionally followed by an error name (or None)."""
        self.extend_columns(list(zip(*rows)), first_row)

    def extend_columns(self, columns: Sequence[Sequence[Any]], first_row: int | None = None) -> None:
        """Append rows given as columns (the rows transposed): `len(self.names)` of ints, optionally one more of error
        names (or None)."""
        start = len(self) if first_row is None else first_row
        names = self.names
        for name, values in zip(names, columns):
            self.columns[name].extend(values)
        if len(columns) > len(names) and columns[len(names)].count(None) != len(columns[len(names)]):
            self.errors.update((start + i, e) for i, e in enumerate(columns[len(names)]) if e is not None)
        self._seq_rows = None

    @classmethod
    def from_events(cls, events: Iterable[CallEvent]) -> EventTable:
        """A table of `CallEvent`s (rows in the given order); their lanes are copied and must be plain JSON (a tuple
        becomes a list; anything else is refused, naming the call)."""
        events = list(events)
        table = cls(events[0].session if events else "")
        node_ids: dict[NodeInfo, int] = {}
        tensor_ids: dict[tuple[TensorMeta, ...], int] = {}
        seq_of = {e.key: e.seq for e in events}
        rows = []
        for e in events:
            node = NodeInfo(e.address, e.class_name, e.role, e.stage)
            n = node_ids.setdefault(node, len(node_ids))
            if n == len(table.nodes):
                table.nodes.append(node)
            ids = []
            for metas in (e.inputs, e.outputs):
                t = tensor_ids.setdefault(metas, len(tensor_ids))
                if t == len(table.tensors):
                    table.tensors.append(metas)
                ids.append(t)
            parent = NO_PARENT if e.parent is None else seq_of.get(e.parent, LOST_PARENT)
            if parent == LOST_PARENT:
                table.lost_parents[len(rows)] = e.parent
            try:
                lane = plain_copy(e.lane)
            except (NotPlain, RecursionError):
                raise EventFileError(f"call {e.address or '<root>'}:{e.call_index}: its lane is not plain JSON (str, "
                                     "int, float, bool, None, lists, str-keyed dicts)") from None
            rows.append((e.seq, e.step, PHASES.index(e.phase), n, e.call_index, parent, table.add_lane(lane),
                         ids[0], ids[1], e.error))
        if rows:
            table.extend(rows)
        return table

    def subset(self, rows: Iterable[int]) -> EventTable:
        """A table of some rows (in the given order), sharing the interned tables."""
        out = EventTable(self.session, self.timed)
        out.nodes, out.lanes, out.tensors, out.threads = self.nodes, self.lanes, self.tensors, self.threads
        kept = list(rows)
        for name in self.names:
            column = self.columns[name]
            out.columns[name] = array("q", (column[r] for r in kept))
        out.errors = {i: self.errors[r] for i, r in enumerate(kept) if r in self.errors}
        out.lost_parents = {i: self.lost_parents[r] for i, r in enumerate(kept) if r in self.lost_parents}
        return out

    def rows_where(self, column: str, wanted: set[int] | frozenset[int]) -> list[int]:
        """Rows whose `column` value is in `wanted`, in start (seq) order."""
        column_values = self.columns[column]
        rows = compress(range(len(column_values)), map(wanted.__contains__, column_values))
        return sorted(rows, key=self.columns["seq"].__getitem__)

    # --- reading ----------------------------------------------------------------------------------------------
    def row_of_seq(self, seq: int) -> int:
        """The row of the call that started `seq`-th (raises KeyError when no call has that seq)."""
        if self._seq_rows is None:
            self._seq_rows = {s: row for row, s in enumerate(self.columns["seq"])}
        return self._seq_rows[seq]

    def event(self, row: int) -> CallEvent:
        """The `CallEvent` of one row (its lane a fresh deep copy: changing it never changes the table)."""
        c = self.columns
        node = self.nodes[c["node"][row]]
        inputs, parent = self.tensors[c["inputs"][row]], c["parent"][row]
        if parent != NO_PARENT:
            try:
                p = self.row_of_seq(parent)
            except KeyError:
                raise EventFileError(f"call {node.address or '<root>'}:{c['call_index'][row]} names a parent call that "
                                     "has no event: the stream was cut inside it") from None
            parent_key: tuple[str, int] | None = (self.nodes[c["node"][p]].address, c["call_index"][p])
        else:
            parent_key = None
        return CallEvent(session=self.session, seq=c["seq"][row], step=c["step"][row], phase=PHASES[c["phase"][row]],
                         address=node.address, class_name=node.class_name, call_index=c["call_index"][row],
                         parent=parent_key, role=node.role, stage=node.stage,
                         lane=plain_copy(self.lanes[c["lane"][row]]),
                         inputs=inputs, outputs=self.tensors[c["outputs"][row]],
                         device=inputs[0].device if inputs else None, error=self.errors.get(row))

    def events(self) -> Iterator[CallEvent]:
        for row in range(len(self)):
            yield self.event(row)


def as_table(events: EventTable | Iterable[CallEvent]) -> EventTable:
    """A table as it is, or the table of some `CallEvent`s."""
    return events if isinstance(events, EventTable) else EventTable.from_events(events)
