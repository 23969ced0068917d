"""The stage view: per group of steps (one phase, one call structure), every stage's loop nest on one line."""

from __future__ import annotations

from typing import Any, Iterable

from ..events.lanes import BEFORE_FIRST_FORWARD, PHASE
from ..merge.loops import Loop
from .notation import stage_line


def stage_view(loops: list[Loop], stages: Iterable[str], step_role: str | None) -> list[dict[str, Any]]:
    """Groups of steps with one phase and one call structure, with every stage's loop nest ("" = empty).
    Work that ran before the first forward joins step 0."""
    step_loops = [loop for loop in loops if loop.role == step_role]
    if not stages or len(step_loops) != 1:
        return []
    (steps,) = step_loops
    early = [loop for loop in loops if loop is not steps
             and all(lane.get(BEFORE_FIRST_FORWARD) for lane in loop.lanes)]
    groups = []
    for v in steps.variants:
        by_phase: dict[tuple[str, bool], list[int]] = {}
        for i in v.iterations:
            by_phase.setdefault((steps.lanes[i].get(PHASE, "?"), i == 0 and bool(early)), []).append(i)
        for (phase, with_early), its in by_phase.items():
            body = v.body + (early if with_early else [])
            groups.append({"steps": its, "phase": phase,
                           "stages": {s: stage_line(body, s, (), frozenset(its)) for s in stages}})
    return sorted(groups, key=lambda g: g["steps"][0])
