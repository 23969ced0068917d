"""A call tree built from events or from a TorchLens `CallTree`: the one input loop inference reads.

Each `Node` is one module call; `children` are the calls it made, in execution order. Built from events, the tree
holds the instrumented calls only (a call's parent is the innermost instrumented call around it); built from a
TorchLens trace, every module call. Calls per address are counted in two places only: `counts` over a tree and
`table_counts` from a table's columns (the observed truth the loop nest must expand to).
"""

from __future__ import annotations

from array import array
from collections import Counter
from itertools import count
from typing import Any, Iterable, Iterator

from ..errors import MergeError
from ..events import lanes
from ..events.table import NO_PARENT, EventTable


class Node:
    """One module call. `children` is a list, or (built from events) computed on each access from the table, so a
    session's call tree never lives in memory as a whole. Built from events, `lane` is the call's seq (the tree's
    `lanes` gives the lanes) and `shape` the structure of its subtree: equal shapes, equal loop nests."""

    __slots__ = ("address", "index", "class_name", "lane", "role", "stage", "_children", "_tree", "_seq")

    def __init__(self, address: str, index: int, class_name: str, lane: Any = None,
                 role: str | None = None, stage: str | None = None, children: list[Node] | None = None):
        self.address, self.index, self.class_name = address, index, class_name
        self.lane = {} if lane is None else lane
        self.role, self.stage = role, stage
        self._children = [] if children is None else children
        self._tree: TableTree | None = None
        self._seq = -1

    @property
    def children(self) -> list[Node]:
        return self._tree.children(self._seq) if self._tree is not None else self._children

    @property
    def shape(self) -> bytes | None:
        """The nodes and depths of the calls under this one, in start order (None: not built from events)."""
        return self._tree.shape(self._seq) if self._tree is not None else None

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()


def _name(address: str, index: int) -> str:
    return f"{address or '<root>'}:{index}"


class TableTree:
    """The call tree of an `EventTable`, checked once, kept as int arrays: the row of each seq, the seq where each
    call's subtree ends (calls nest: a call's descendants started after it and before it ended) and, per seq, its
    node and depth (`shape`: two calls whose subtrees hold the same nodes at the same depths have one structure).

    Refuses a stream with a call missing or doubled: `seq` must run 0..N-1, each node's call indices 1..n in start
    order, and each parent must be running when its child starts."""

    def __init__(self, table: EventTable):
        self.table = table
        c = table.columns
        self.node, self.index, self.lane_id = c["node"], c["call_index"], c["lane"]
        self.step, self.phase = c["step"], c["phase"]
        self.rows = self._rows_by_seq(c["seq"])
        self.end, self.shapes = self._check(c["parent"])
        self._lanes: dict[int, dict[str, Any]] = {}

    def _rows_by_seq(self, seqs: Any) -> array:
        n = len(seqs)
        if max(seqs, default=-1) >= n:  # some seq is missing: name the first (without an array as long as the seq)
            present = bytearray(n)
            for s in seqs:
                if s < n:
                    present[s] = 1
            missing = present.index(0)
            later = min(s for s in seqs if s > missing)
            raise MergeError(f"event seq {missing} is missing (next is {self._name_of(list(seqs).index(later))} with "
                             f"seq {later}): the stream lost a call")
        rows = array("q", [-1]) * n
        for row, s in enumerate(seqs):
            if rows[s] != -1:
                raise MergeError(f"event seq {s} ({self._name_of(row)}) appears twice: the stream holds a duplicated "
                                 "line")
            rows[s] = row
        return rows

    def _name_of(self, row: int) -> str:
        return _name(self.table.nodes[self.node[row]].address, self.index[row])

    def _check(self, parents: Any) -> tuple[array, array]:
        """Call indices 1..n per node in start order, every parent open when its child starts; the subtree ends and
        the shapes (node + nodes x depth, per seq)."""
        rows, seen, width = self.rows, [0] * len(self.table.nodes), len(self.table.nodes)
        end, shapes = array("q", [0]) * len(rows), array("q")
        stack: list[int] = []
        for s, node, index, parent in zip(count(), map(self.node.__getitem__, rows), map(self.index.__getitem__, rows),
                                          map(parents.__getitem__, rows)):
            seen[node] += 1
            if index != seen[node]:
                if index < seen[node]:
                    raise MergeError(f"two events for {self._name_of(rows[s])}")
                raise MergeError(f"{self._name_of(rows[s])} starts as call {seen[node]} of its node: the stream lost "
                                 "or renumbered a call")
            while stack and stack[-1] != parent:
                end[stack.pop()] = s
            if parent != NO_PARENT and not stack:
                raise MergeError(f"event {self._name_of(rows[s])} names parent {self._parent_name(parent, rows[s])}, "
                                 "which has no event that started before it and was still running")
            shapes.append(node + width * len(stack))
            stack.append(s)
        for s in stack:
            end[s] = len(rows)
        return end, shapes

    def _parent_name(self, seq: int, row: int) -> str:
        if 0 <= seq < len(self.rows):
            return self._name_of(self.rows[seq])
        lost = self.table.lost_parents.get(row)
        return _name(*lost) if lost else f"seq {seq}"

    def lanes(self, seqs: Iterable[int]) -> list[dict[str, Any]]:
        """The lanes of some calls, each with its step and phase (one dict shared by the calls of one lane, step and
        phase; its key in `_lanes` is one int: (step x lanes + lane) x phases + phase)."""
        rows = list(map(self.rows.__getitem__, seqs))
        width, phases = len(self.table.lanes), len(lanes.PHASES)
        keys = [(step * width + lane) * phases + phase for lane, step, phase in
                zip(map(self.lane_id.__getitem__, rows), map(self.step.__getitem__, rows),
                    map(self.phase.__getitem__, rows))]
        return [self._lanes.get(key) or self._lane(key) for key in keys]

    def _lane(self, key: int) -> dict[str, Any]:
        rest, phase = divmod(key, len(lanes.PHASES))
        step, lane_id = divmod(rest, len(self.table.lanes))
        lane = self._lanes[key] = dict(self.table.lanes[lane_id])
        lane.setdefault(lanes.STEP, step)
        lane.setdefault(lanes.PHASE, lanes.PHASES[phase])
        return lane

    def node_at(self, seq: int) -> Node:
        """The `Node` of call `seq`, its lane the seq."""
        row = self.rows[seq]
        info = self.table.nodes[self.node[row]]
        node = Node(info.address, self.index[row], info.class_name, seq, info.role, info.stage)
        node._tree, node._seq = self, seq
        return node

    def shape(self, seq: int) -> bytes:
        """The shapes of the calls under call `seq` (empty for a leaf): for two calls at one depth, equal exactly when
        their subtrees call the same nodes in the same order and nesting."""
        return self.shapes[seq + 1:self.end[seq]].tobytes()

    def children(self, seq: int) -> list[Node]:
        out, child = [], seq + 1
        while child < self.end[seq]:
            out.append(self.node_at(child))
            child = self.end[child]
        return out

    def roots(self) -> list[Node]:
        """The top-level calls of the session (parent None), each with its subtree (built on access), in start
        order."""
        out, s = [], 0
        while s < len(self.rows):
            out.append(self.node_at(s))
            s = self.end[s]
        return out


def from_trace(tree: Any) -> list[Node]:
    """The root call of a TorchLens `CallTree` (probe/capture.py), every module call under it."""
    nodes = {key: Node(c.address, c.index, c.class_name) for key, c in tree.calls.items()}
    for key, call in tree.calls.items():
        nodes[key].children.extend(nodes[k] for k in call.children)
    return [nodes[tree.root]]


def counts(roots: Iterable[Node]) -> dict[str, int]:
    """Calls per address under `roots` (addresses in order of first call)."""
    return dict(Counter(node.address for root in roots for node in root.walk()))


def table_counts(table: EventTable) -> dict[str, int]:
    """Calls per address in a table (addresses in order of first call), counted from its columns alone."""
    calls = [0] * len(table.nodes)
    first = [len(table)] * len(table.nodes)
    for node, seq in zip(table.columns["node"], table.columns["seq"]):
        calls[node] += 1
        if seq < first[node]:
            first[node] = seq
    ran = sorted((n for n in range(len(calls)) if calls[n]), key=first.__getitem__)
    return {table.nodes[n].address: calls[n] for n in ran}
