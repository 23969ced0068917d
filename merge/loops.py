"""Loop inference: turn a call tree into a loop nest of `call`, `for`, `parfor` and `select` nodes.

Rules (docs/semantics.md), applied to the children of every call:
- the same address called n > 1 times inside one parent call is `parfor n`; iterations whose bodies differ are
  kept as separate variants (the prefill step with vision, the decode steps without);
- sibling addresses `P.i` (one container P) called once each are a `for` over the members; members whose bodies
  differ are split into sub-ranges (a one-member range is a plain `call`);
- when only some members of P ran (or the config declares P a selection), it is `select k of M`, with the member
  ids picked in each parent call kept in `picks`;
- a batch is never a loop: a call with batch 6 is one call;
- sibling parfors of one bound n whose calls alternate (A B A B: round i calls iteration i of each, in the same
  order) are marked `rounds` (their addresses in call order): a loop over n rounds around all of them.
Bodies of equal shape (addresses relative to the member, select picks and lanes ignored) collapse into one
representative; per-instance data (lanes, picks) is concatenated in expansion order, so `expand()` reproduces
every per-node call count exactly; `check_exact` is the acceptance test of every loop nest.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..errors import ExactnessError
from .calltree import Node


@dataclass
class Variant:
    """One body shared by some iterations of a parfor (positions within one parent call, 0-based)."""

    iterations: list[int]
    body: list[Loop]


@dataclass
class Loop:
    kind: str  # "call" | "for" | "parfor" | "select"
    address: str  # the node (call, parfor) or the representative member (for, select)
    class_name: str
    bound: int  # call 1, for N, parfor N, select: largest k seen
    container: str | None = None  # for / select: the container whose members are iterated
    members: list[int] = field(default_factory=list)  # for: member indices; select: every index ever picked
    container_size: int | None = None  # select: members the container has (M), when known
    axis: str | None = None
    role: str | None = None
    stage: str | None = None
    lanes: list[dict[str, Any]] = field(default_factory=list)  # one per iteration, all instances, expansion order
    picks: list[list[int]] = field(default_factory=list)  # select: member indices picked, one list per instance
    variants: list[Variant] = field(default_factory=list)
    distinguish: list[str] = field(default_factory=list)  # lane keys that tell members apart (for: shown per range)
    rounds: list[str] = field(default_factory=list)  # parfor: the sibling parfors (itself included) it alternates with

    @property
    def body(self) -> list[Loop]:
        return self.variants[0].body if self.variants else []


@dataclass
class Hints:
    """What a model config adds: roles that are selections, axis labels and member-distinguishing lane keys per
    role, container sizes (the M of `select k of M`).

    Without a config (`select_roles is None`), a selection is inferred only where the members that ran leave a gap
    (`experts.1, experts.4`); a contiguous run is a `for`, since data dependence cannot be seen from one trace."""

    select_roles: frozenset[str] | None = None
    axes: dict[str, str] = field(default_factory=dict)
    distinguish: dict[str, tuple[str, ...]] = field(default_factory=dict)
    container_sizes: dict[str, int] = field(default_factory=dict)


def _member(address: str) -> tuple[str, int] | None:
    head, _, tail = address.rpartition(".")
    return (head, int(tail)) if tail.isdigit() else None


def join(container: str, index: int | str) -> str:
    """The address of member `index` of `container` (the root's members are `0`, `1`, ...)."""
    return f"{container}.{index}" if container else str(index)


def _rel(address: str, base: str) -> str:
    if base and (address == base or address.startswith(base + ".")):
        return "~" + address[len(base):]
    return address


def signature(loops: list[Loop], base: str) -> tuple:
    """Shape of a body relative to `base`: kinds, addresses, classes, bounds; not lanes or select picks. A loop's own
    part below its address is computed once and kept on it (`_inner`, not a field: reports never hold it); merging
    instances (`absorb`) never changes it."""
    out = []
    for loop in loops:
        inner = loop.__dict__.get("_inner")
        if inner is None:
            if loop.kind == "select":
                inner = signature(loop.body, loop.address)
            else:
                inner = tuple((tuple(v.iterations), signature(v.body, loop.address)) for v in loop.variants)
            loop.__dict__["_inner"] = inner
        if loop.kind == "select":
            out.append(("select", _rel(loop.container or "", base), loop.class_name, inner))
        else:
            out.append((loop.kind, _rel(loop.address, base), loop.class_name, loop.bound, tuple(loop.members), inner,
                        tuple(_rel(a, base) for a in loop.rounds)))
    return tuple(out)


def absorb(into: list[Loop], other: list[Loop]) -> None:
    """Append the per-instance data of `other` (same signature) to `into`."""
    for a, b in zip(into, other, strict=True):
        a.lanes.extend(b.lanes)
        a.picks.extend(b.picks)
        a.bound = max(a.bound, b.bound)
        if a.kind == "select":
            a.members = sorted(set(a.members) | set(b.members))
        for va, vb in zip(a.variants, b.variants, strict=True):
            absorb(va.body, vb.body)


_Replay = list[tuple[Loop, list[int], list[list[int]]]]
"""Per-instance data of one body, relative to its call: per loop of the body (in `walk` order), the seq offsets of
its lanes and its picks."""


def _replay_of(into: list[Loop], body: list[Loop], seq: int) -> _Replay:
    """What absorbing `body` (built from the call `seq`, lanes still seqs) into `into` appends, relative to `seq`."""
    return [(a, [lane - seq for lane in b.lanes], [list(p) for p in b.picks])
            for a, b in zip(walk(into), walk(body), strict=True)]


def _replay(replay: _Replay, seq: int) -> None:
    """Absorb the body of call `seq` without building it: its calls are those of the replay's call, shifted."""
    for loop, offsets, picks in replay:
        loop.lanes.extend([seq + k for k in offsets])
        if picks:
            loop.picks.extend([list(p) for p in picks])


class LoopBuilder:
    """Builds loop nests. Calls from a `TableTree` carry their seq as `lane` and a `shape`; with `lanes_of`, the nest
    is built with seqs (an int array per loop) and they are replaced by their lanes at the end. Of the calls of one
    address, those of one shape (the decode steps) have one body: the first is built, the others replay its lanes and
    picks, shifted (the same nest as building and absorbing each body: tests/test_merge_replay.py)."""

    def __init__(self, hints: Hints | None = None,
                 lanes_of: Callable[[Iterable[int]], list[dict[str, Any]]] | None = None):
        self.hints = hints or Hints()
        self.lanes_of = lanes_of

    def build(self, calls: list[Node]) -> list[Loop]:
        """The loop nest of a session's top-level calls (or of any list of sibling calls), lanes resolved."""
        loops = self._build(calls)
        if self.lanes_of is not None:
            for loop in walk(loops):
                loop.lanes = self.lanes_of(loop.lanes)
        return loops

    def _build(self, calls: list[Node]) -> list[Loop]:
        """The loop nest of a list of sibling calls (the children of one call, or a session's top-level calls)."""
        by_address: dict[str, list[Node]] = {}
        for c in calls:
            by_address.setdefault(c.address, []).append(c)
        stacks: dict[str, list[Node]] = {}  # container -> its members called once each
        order: list[tuple[str, str]] = []  # (kind of group, key) in order of first appearance
        for address, group in by_address.items():
            member = _member(address)
            if len(group) == 1 and member is not None:
                if member[0] not in stacks:
                    stacks[member[0]] = []
                    order.append(("stack", member[0]))
                stacks[member[0]].append(group[0])
            else:
                order.append(("node", address))
        loops: list[Loop] = []
        for kind, key in order:
            loops.extend(self._node(by_address[key]) if kind == "node" else self._stack(key, stacks[key]))
        _mark_rounds(calls, loops)
        return loops

    def _lanes(self, calls: Iterable[Node]) -> Any:
        """The lanes of some calls, or (with `lanes_of`) their seqs, in an array until the nest is built."""
        found = [c.lane for c in calls]
        return array("q", found) if self.lanes_of is not None else found

    def _label(self, loop: Loop, node: Node) -> Loop:
        loop.role, loop.stage = node.role, node.stage
        loop.axis = self.hints.axes.get(node.role or "")
        loop.distinguish = list(self.hints.distinguish.get(node.role or "", ()))
        return loop

    def _node(self, calls: list[Node]) -> list[Loop]:
        first = calls[0]
        variants: list[Variant] = []
        sigs: dict[tuple, Variant] = {}
        replays: dict[bytes | None, tuple[Variant, _Replay]] = {}  # shape -> its variant, its replay
        for i, call in enumerate(calls):  # one body at a time: absorbed, then dropped
            shape = call.shape
            if shape in replays:
                replays[shape][0].iterations.append(i)
                _replay(replays[shape][1], call.lane)
                continue
            body = self._build(call.children)
            sig = signature(body, first.address)
            v = sigs.get(sig)
            if v is not None:
                v.iterations.append(i)
                absorb(v.body, body)
            else:
                v = sigs[sig] = Variant([i], body)
                variants.append(v)
            if shape is not None:
                replays[shape] = (v, _replay_of(v.body, body, call.lane))
        kind = "parfor" if len(calls) > 1 else "call"
        loop = Loop(kind, first.address, first.class_name, len(calls), lanes=self._lanes(calls),
                    variants=variants)
        return [self._label(loop, first)]

    def _stack(self, container: str, calls: list[Node]) -> list[Loop]:
        members = [(_member(c.address)[1], c) for c in calls]
        indices = [i for i, _ in members]
        if self.hints.select_roles is None:
            is_select = indices != list(range(indices[0], indices[0] + len(indices)))
        else:
            is_select = calls[0].role in self.hints.select_roles
        size = self.hints.container_sizes.get(container)
        bodies = [self._build(c.children) for _, c in members]
        sigs = [(c.class_name, signature(b, c.address)) for (_, c), b in zip(members, bodies)]
        if is_select and len(set(sigs)) == 1:
            first = members[0][1]
            loop = Loop("select", first.address, first.class_name, len(members), container=container,
                        members=sorted(indices), container_size=size,
                        lanes=self._lanes(c for _, c in members), picks=[[i for i, _ in members]],
                        variants=[Variant(list(range(len(members))), bodies[0])])
            for body in bodies[1:]:
                absorb(loop.body, body)
            return [self._label(loop, first)]
        loops: list[Loop] = []
        start = 0
        for end in range(1, len(members) + 1):
            if end < len(members) and sigs[end] == sigs[start] and members[end][0] == members[end - 1][0] + 1:
                continue
            run, run_bodies = members[start:end], bodies[start:end]
            first = run[0][1]
            kind = "for" if len(run) > 1 else "call"
            loop = Loop(kind, first.address, first.class_name, len(run), container=container,
                        members=[i for i, _ in run], lanes=self._lanes(c for _, c in run),
                        variants=[Variant([0], run_bodies[0])])
            for body in run_bodies[1:]:
                absorb(loop.body, body)
            loops.append(self._label(loop, first))
            start = end
        return loops


def _mark_rounds(calls: list[Node], loops: list[Loop]) -> None:
    """Mark the parfors of one bound n whose calls alternate, round after round, in one order (A B A B)."""
    by_bound: dict[int, list[Loop]] = {}
    for loop in loops:
        if loop.kind == "parfor":
            by_bound.setdefault(loop.bound, []).append(loop)
    for bound, group in by_bound.items():
        addresses = [loop.address for loop in group]  # in order of first call
        if len(group) > 1 and [c.address for c in calls if c.address in addresses] == addresses * bound:
            for loop in group:
                loop.rounds = list(addresses)


def substitute(address: str, subs: tuple[tuple[str, str], ...]) -> str:
    """Apply (old prefix -> new prefix) pairs in order; a prefix matches whole address components only."""
    for old, new in subs:
        if address == old or address.startswith(old + "."):
            address = new + address[len(old):]
    return address


def expand(loops: Iterable[Loop]) -> Counter[str]:
    """Multiply out every loop: the number of calls of each node that the nest describes. A variant's body with no
    `select` in it counts the same in every iteration: it is visited once, its counts times its iterations (a select
    takes the next picks on each visit; the visits of one variant keep their order)."""
    out: Counter[str] = Counter()
    cursors: Counter[int] = Counter()
    selects: dict[int, bool] = {}  # id of a body -> whether a select is in it

    def visit(loops: Iterable[Loop], subs: tuple[tuple[str, str], ...], times: int) -> None:
        for loop in loops:
            if loop.kind in ("call", "parfor"):
                bound = loop.bound if loop.kind == "parfor" else 1
                out[substitute(loop.address, subs)] += bound * times
                positions = {i: j for j, v in enumerate(loop.variants) for i in v.iterations}
                for j, k in Counter(positions[i] for i in range(bound)).items():
                    body = loop.variants[j].body
                    if id(body) not in selects:
                        selects[id(body)] = any(inner.kind == "select" for inner in walk(body))
                    for _ in range(k if selects[id(body)] else 1):
                        visit(body, subs, times if selects[id(body)] else times * k)
            else:
                if loop.kind == "select":
                    picked = loop.picks[cursors[id(loop)]]
                    cursors[id(loop)] += 1
                else:
                    picked = loop.members
                container = substitute(loop.container, subs)
                for m in picked:
                    member = join(container, m)
                    out[member] += times
                    visit(loop.body, subs + ((substitute(loop.address, subs), member),), times)

    visit(loops, (), 1)
    return out


def walk(loops: Iterable[Loop]) -> Iterable[Loop]:
    for loop in loops:
        yield loop
        for v in loop.variants:
            yield from walk(v.body)


def check_exact(loops: list[Loop], observed: dict[str, int], what: str = "report") -> None:
    """Expanding `loops` must give exactly the `observed` calls of every node; `ExactnessError` lists each difference."""
    got = expand(loops)
    diffs = [f"  {node or '<root>'}: observed {observed.get(node, 0)} calls, {what} expands to {got.get(node, 0)}"
             for node in sorted(set(got) | set(observed)) if got.get(node, 0) != observed.get(node, 0)]
    if diffs:
        raise ExactnessError(f"{what} is not exact ({len(diffs)} nodes differ):\n" + "\n".join(diffs[:50]))
