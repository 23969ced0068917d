"""Alignment of a session's events with a TorchLens trace of its first steps (the probe).

For the steps the probe traced (one per call of the step address in the trace), every instrumented node must have
the same number of calls on both sides, and each event `address:k` must line up with TorchLens's call `address:k`:
same class, the same tensor input shapes in the same order, and the same nearest instrumented ancestor as parent.
The one allowed gap: a call that runs no tensor op is absent from TorchLens (it lands in `uncalled`), so nodes
whose events show no tensor output and that TorchLens lists as uncalled are expected from the events only.
Every other difference raises `AlignmentError` naming the node, the call index and both sides.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from ..errors import AlignmentError
from ..events.schema import CallEvent
from ..events.table import EventTable, as_table
from .calltree import counts, from_trace


def _brief(shapes: list[tuple[int, ...]]) -> str:
    return "[" + ", ".join(str(s) for s in shapes[:4]) + (f", ... {len(shapes)} in all]" if len(shapes) > 4 else "]")


def _name(key: tuple[str, int] | None) -> str:
    return "none" if key is None else f"{key[0] or '<root>'}:{key[1]}"


def align(events: EventTable | list[CallEvent], tree: Any, instrumented: Iterable[str],
          step_address: str = "") -> dict[str, Any]:
    """Check the events of the traced steps (one per call of `step_address`) against the trace; return a summary.
    Only the calls of those steps are turned into `CallEvent`s."""
    table = as_table(events)
    instrumented = set(instrumented)
    traced = counts(from_trace(tree))
    steps = traced.get(step_address, 0)
    step_nodes = {i for i, n in enumerate(table.nodes) if n.address == step_address}
    ran = len({table.columns["step"][r] for r in table.rows_where("node", step_nodes)})
    if steps > ran:
        raise AlignmentError(f"the TorchLens probe traced {steps} steps but the session ran {ran}: the probe must "
                             "repeat the session's first steps, not more")
    window = [table.event(r) for r, step in enumerate(table.columns["step"]) if step < steps]
    recorded = Counter(e.address for e in window)
    events_only = sorted(a for a in instrumented if recorded[a] and not traced.get(a) and a in tree.uncalled
                         and all(not e.outputs for e in window if e.address == a))
    problems = [f"{a or '<root>'}: {recorded[a]} calls in the events of steps 0..{steps - 1}, {traced.get(a, 0)} in "
                "the TorchLens trace" for a in sorted(instrumented - set(events_only))
                if recorded[a] != traced.get(a, 0)]
    for e in sorted(window, key=lambda e: e.seq):
        call = tree.calls.get(e.key)
        if e.address in events_only or call is None:  # a missing call is already reported as a count difference
            continue
        name = _name(e.key)
        if call.class_name != e.class_name:
            problems.append(f"{name}: class {e.class_name} in the events, {call.class_name} in the trace")
        ev_shapes, tl_shapes = [tuple(t.shape) for t in e.inputs], [tuple(s) for s in call.input_shapes]
        if ev_shapes != tl_shapes:
            problems.append(f"{name}: input shapes {_brief(ev_shapes)} in the events, {_brief(tl_shapes)} in the trace")
        parent = call.parent
        while parent is not None and parent[0] not in instrumented:
            parent = tree.calls[parent].parent
        if parent != e.parent:
            problems.append(f"{name}: parent call {_name(e.parent)} in the events, {_name(parent)} in the trace")
    if problems:
        raise AlignmentError(f"events and the TorchLens trace disagree ({len(problems)} problems):\n  "
                             + "\n  ".join(problems[:40]))
    return {"traced_steps": steps, "events_aligned": len(window) - sum(recorded[a] for a in events_only),
            "events_only": events_only}
