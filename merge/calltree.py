"""A call tree built from events or from a TorchLens `CallTree`: the one input loop inference reads.

Each `Node` is one module call; `children` are the calls it made, in execution order. Built from events, the tree
holds the instrumented calls only (a call's parent is the innermost instrumented call around it); built from a
TorchLens trace, every module call. `counts` is the one place calls are counted per address.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ..errors import MergeError
from ..events import lanes
from ..events.schema import CallEvent


@dataclass
class Node:
    address: str
    index: int
    class_name: str
    lane: dict[str, Any] = field(default_factory=dict)
    role: str | None = None
    stage: str | None = None
    children: list[Node] = field(default_factory=list)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()


def from_events(events: Iterable[CallEvent]) -> list[Node]:
    """The top-level calls of a session (parent None), each with its subtree, in start order.

    Refuses a stream with a call missing: `seq` must run 0..N-1 and each node's call indices 1..n in start order."""
    nodes: dict[tuple[str, int], Node] = {}
    roots: list[Node] = []
    seen: Counter[str] = Counter()
    ordered = sorted(events, key=lambda e: e.seq)
    for position, e in enumerate(ordered):
        name = f"{e.address or '<root>'}:{e.call_index}"
        if position and ordered[position - 1].seq == e.seq:
            raise MergeError(f"event seq {e.seq} ({name}) appears twice: the stream holds a duplicated line")
        if e.seq != position:
            raise MergeError(f"event seq {position} is missing (next is {name} with seq {e.seq}): the stream lost a "
                             "call")
        if e.key in nodes:
            raise MergeError(f"two events for {name}")
        seen[e.address] += 1
        if e.call_index != seen[e.address]:
            raise MergeError(f"{name} starts as call {seen[e.address]} of its node: the stream lost or renumbered a "
                             "call")
        lane = dict(e.lane)
        lane.setdefault(lanes.STEP, e.step)
        lane.setdefault(lanes.PHASE, e.phase)
        node = nodes[e.key] = Node(e.address, e.call_index, e.class_name, lane, e.role, e.stage)
        if e.parent is None:
            roots.append(node)
        elif e.parent not in nodes:
            raise MergeError(f"event {name} names parent {e.parent[0]}:{e.parent[1]}, which has no event that "
                             "started before it")
        else:
            nodes[e.parent].children.append(node)
    return roots


def from_trace(tree: Any) -> list[Node]:
    """The root call of a TorchLens `CallTree` (probe/capture.py), every module call under it."""
    nodes = {key: Node(c.address, c.index, c.class_name) for key, c in tree.calls.items()}
    for key, call in tree.calls.items():
        nodes[key].children = [nodes[k] for k in call.children]
    return [nodes[tree.root]]


def counts(roots: Iterable[Node]) -> dict[str, int]:
    """Calls per address under `roots` (addresses in order of first call)."""
    return dict(Counter(node.address for root in roots for node in root.walk()))
