"""Loop inference replays the calls of one shape (merge/loops.py `LoopBuilder`): the same nest as building each body.

Seeded random sessions whose decode steps often repeat the shape of the step before (the same calls at the same
depths), with lanes that change on every call and members called with gaps (selects with picks). The nest made from
the events (steps of a shape seen before are replayed, not built) must equal the nest built from plain call trees of
the same calls (every body built and compared), and expand to the calls counted from the events.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from loopmeta.events import lanes
from loopmeta.events.schema import CallEvent, SessionEnd
from loopmeta.merge.calltree import Node
from loopmeta.merge.loops import Hints, LoopBuilder, expand
from loopmeta.report import session_report


def _children(address: str, shape: random.Random) -> list[str]:
    """The addresses one call calls, drawn from `shape`: a stack, a selection with gaps (of members that call
    nothing, so their bodies agree), repeats, or alternation."""
    at = f"{address}." if address else ""
    kind = shape.choice(["stack", "select", "repeat", "alternate", "leaf"])
    if kind == "stack":
        return [f"{at}layers.{i}" for i in range(shape.choice([2, 3]))]
    if kind == "select":
        return [f"{at}experts.{i}" for i in sorted(shape.sample(range(6), shape.choice([1, 2, 3])))]
    if kind == "repeat":
        return [f"{at}block"] * shape.choice([1, 2, 3])
    return [f"{at}{name}" for _ in range(shape.choice([1, 2])) for name in ("a", "b")] if kind == "alternate" else []


def _class(address: str) -> str:
    """One class per module kind: the members of a stack or a selection share theirs."""
    return "C" + next(part for part in reversed(address.split(".")) if not part.isdigit())


def random_session(seed: int) -> tuple[list[CallEvent], int]:
    """Events (in a shuffled finish order) of 2..30 steps; each decode step repeats the last one's shape 70% of the
    time."""
    rng = random.Random(seed)
    events: list[CallEvent] = []
    index: Counter[str] = Counter()

    def call(address: str, parent: tuple[str, int] | None, step: int, depth: int, shape: random.Random) -> None:
        index[address] += 1
        me = (address, index[address])
        events.append(CallEvent("s", len(events), step, lanes.PREFILL if step == 0 else lanes.DECODE, address,
                                _class(address), index[address], parent, "r", None,
                                {"k": rng.randrange(3), "step_note": step}))
        for child in _children(address, shape) if depth < 3 and ".experts." not in f".{address}" else []:
            call(child, me, step, depth + 1, shape)

    steps = rng.randrange(2, 30)
    start = random.Random(seed + 1).getstate()
    for step in range(steps):
        if step > 1 and rng.random() < 0.3:
            start = random.Random(rng.random()).getstate()  # a new shape
        shape = random.Random()
        shape.setstate(start)
        call("", None, step, 0, shape)
    rng.shuffle(events)
    return events, steps


def plain_roots(events: list[CallEvent]) -> list[Node]:
    """The call trees of the events as plain nodes (no shapes: every body is built), lanes with step and phase."""
    nodes = {}
    for e in sorted(events, key=lambda e: e.seq):
        lane = dict(e.lane)
        lane.setdefault(lanes.STEP, e.step)
        lane.setdefault(lanes.PHASE, e.phase)
        nodes[e.key] = Node(e.address, e.call_index, e.class_name, lane, e.role, e.stage)
        if e.parent is not None:
            nodes[e.parent].children.append(nodes[e.key])
    return [nodes[e.key] for e in sorted(events, key=lambda e: e.seq) if e.parent is None]


@pytest.mark.parametrize("seed", range(40))
def test_replayed_steps_give_the_nest_built_call_by_call(seed, monkeypatch):
    from loopmeta.merge import loops

    events, steps = random_session(seed)
    replayed = []
    real = loops._replay
    monkeypatch.setattr(loops, "_replay", lambda *args: (replayed.append(args[1]), real(*args))[1])
    report = session_report(events, None, model_class="M",
                            end=SessionEnd(session="s", events=len(events), steps=steps, ended="returned"))
    assert replayed  # steps were replayed, not all built
    built = LoopBuilder(Hints()).build(plain_roots(events))
    assert [dataclasses.asdict(loop) for loop in report.loops] == [dataclasses.asdict(loop) for loop in built]
    assert expand(report.loops) == Counter(e.address for e in events)


def test_the_random_sessions_repeat_shapes_and_select():
    """The sessions above exercise replays: most decode steps repeat a shape, and selections with gaps occur."""
    repeated = selects = 0
    for seed in range(40):
        events, _ = random_session(seed)
        by_step: dict[int, list[str]] = {}
        for e in sorted(events, key=lambda e: e.seq):
            by_step.setdefault(e.step, []).append(e.address)
        decode = [tuple(calls) for step, calls in sorted(by_step.items()) if step > 0]
        repeated += len(decode) - len(set(decode))
        selects += any(".experts." in e.address for e in events)
    assert repeated > 100 and selects > 10
