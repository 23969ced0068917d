"""Loop notation: the one-line textual forms of loops that the report's stage view and every writer share.

`model.vision_tower parfor 2`, `model.layers[1..11] for 11`, `model.layers[i].mlp.experts[*] select 2..6 of 64`;
inside a `for` or `select`, the representative member reads as an index variable (`layers[i]`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..events.lanes import (BEFORE_FIRST_FORWARD, EXPERTS_HIT, EXPERTS_TOTAL, INPUT_KEYS, PHASE, STEP, STEP_KEYS,
                            TOKENS_PER_EXPERT, TOP_K)
from ..merge.loops import Loop, substitute


def name(address: str, class_name: str = "") -> str:
    return address or f"<root {class_name}>".replace(" >", ">")


def fmt_lane(lane: dict[str, Any]) -> str:
    return " ".join(f"{k}={value_text(v)}" for k, v in lane.items() if k not in STEP_KEYS + INPUT_KEYS)


_SHOWN_ELSEWHERE = STEP_KEYS + INPUT_KEYS + (EXPERTS_HIT, TOKENS_PER_EXPERT, EXPERTS_TOTAL, TOP_K)


def lane_summary(lanes: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> str:
    """The lanes of a node's calls in one line, per phase when phases differ: a key with one value as `k=v`, two
    values as `k=a/b`, more integers as `k=lo..hi`, up to three other values as `k=a/b/c`; keys whose values vary more (expert ids, router
    outputs) are left to the MoE table."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for lane in lanes:
        groups.setdefault(lane.get(PHASE), []).append(lane)
    parts: list[tuple[Any, str]] = []
    for phase, group in groups.items():
        keys = dict.fromkeys(k for lane in group for k in lane if k not in _SHOWN_ELSEWHERE + skip)
        shown = [text for text in (_key_summary(k, [lane[k] for lane in group if k in lane]) for k in keys) if text]
        if shown:
            parts.append((phase, " ".join(shown)))
    if len({text for _, text in parts}) == 1:
        return parts[0][1]
    return " | ".join((f"{phase}: " if phase else "") + text for phase, text in parts)


def _key_summary(key: str, values: list[Any]) -> str:
    texts = list(dict.fromkeys(value_text(v) for v in values))
    if len(texts) == 1:
        return f"{key}={texts[0]}"
    if len(texts) == 2 and not any(isinstance(v, (list, dict)) for v in values):
        return f"{key}={'/'.join(texts)}"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return f"{key}={min(values)}..{max(values)}"
    if len(texts) <= 3 and not any(isinstance(v, (list, dict)) for v in values):
        return f"{key}={'/'.join(texts)}"
    return ""


def value_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(value_text(x) for x in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{value_text(x)}" for k, x in value.items()) + "}"
    return str(value)


STEP_RUNS_KEY = "k=a..b: one more per step"
"""What a value range on a line of steps means (the text, Markdown and HTML reports say it once, when one counts)."""


class StepLine(NamedTuple):
    """One line of the report's steps: `steps` (`4` or `1..255`), the phase, the lane text, and whether a value in it
    counts up with the steps (`k=a..b`)."""

    steps: str
    phase: str
    lane: str
    counts: bool


def step_runs(steps: list[dict[str, Any]]) -> list[StepLine]:
    """The report's steps as lines: consecutive steps of one phase with the same shown keys, each key's value shown
    the same in every step or an integer one larger per step, make one line (`steps 1..255`, the counting keys as
    `k=a..b` over as many values as steps); every other step is a line of its own.

        >>> step_runs([{"step": 1, "phase": "decode", "past": 9}, {"step": 2, "phase": "decode", "past": 10}])[0].lane
        'past=9..10'
    """
    runs: list[list[dict[str, Any]]] = []
    for step in steps:
        if runs and _continues(runs[-1], step):
            runs[-1].append(step)
        else:
            runs.append([step])
    lines = []
    for run in runs:
        first, last = _shown(run[0]), _shown(run[-1])
        counting = [k for k, v in first.items() if value_text(v) != value_text(last[k])]
        text = " ".join(f"{k}={v}..{last[k]}" if k in counting else f"{k}={value_text(v)}" for k, v in first.items())
        lines.append(StepLine(ranges([s[STEP] for s in run]), run[0][PHASE], text, bool(counting)))
    return lines


def _shown(step: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in step.items() if k not in STEP_KEYS + INPUT_KEYS}


def _continues(run: list[dict[str, Any]], step: dict[str, Any]) -> bool:
    first, last, new = _shown(run[0]), _shown(run[-1]), _shown(step)
    if step[STEP] != run[-1][STEP] + 1 or step[PHASE] != run[0][PHASE] or list(new) != list(first):
        return False
    for key, value in new.items():
        same = value_text(value) == value_text(first[key]) == value_text(last[key])
        counts = all(type(v) is int for v in (value, first[key], last[key])) and \
            value == last[key] + 1 == first[key] + len(run)
        if not (same or counts):
            return False
    return True


def ranges(indices: list[int]) -> str:
    out, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}..{x}")
            start = None
    return ",".join(out)


def varying(loop: Loop) -> str:
    """The loop's `distinguish` keys whose values differ between the members of one `for` instance (e.g. global
    vs window attention), each value with the members that have it."""
    members = loop.lanes[: loop.bound]
    keys = [k for k in loop.distinguish if len({value_text(m.get(k)) for m in members}) > 1]
    parts = []
    for k in keys:
        groups: dict[str, list[int]] = {}
        for idx, m in zip(loop.members, members):
            groups.setdefault(value_text(m.get(k)), []).append(idx)
        parts.append(f"{k}: " + "; ".join(f"{v} at [{ranges(ix)}]" for v, ix in groups.items()))
    return " | ".join(parts)


Subs = tuple[tuple[str, str], ...]
_VARS = "ijklmn"


def _container(loop: Loop, subs: Subs) -> str:
    return substitute(loop.container, subs) if loop.container else "<root>"


def member_subs(loop: Loop, subs: Subs) -> Subs:
    """Inside a for / select body, the representative member reads as an index variable: `model.layers[i]`."""
    if loop.kind not in ("for", "select"):
        return subs
    var = _VARS[sum(1 for _, new in subs if new.endswith("]")) % len(_VARS)]
    return subs + ((substitute(loop.address, subs), f"{_container(loop, subs)}[{var}]"),)


def short(loop: Loop, subs: Subs = (), steps: frozenset[int] | None = None) -> str:
    """The loop's own line without lanes: `model.sam_model parfor 2`, `model.layers[1..11] for 11`; `steps`
    restricts the data-dependent counts (experts selected) to those steps."""
    address = name(substitute(loop.address, subs), loop.class_name)
    hits = [len(lane[EXPERTS_HIT]) for lane in loop.lanes
            if EXPERTS_HIT in lane and (steps is None or lane.get(STEP) in steps)]
    if hits and loop.kind == "call":  # a MoE call whose experts are not modules (the ledger lives in its lanes)
        k = str(hits[0]) if len(set(hits)) == 1 else f"{min(hits)}..{max(hits)}"
        total, top = loop.lanes[0].get(EXPERTS_TOTAL), loop.lanes[0].get(TOP_K)
        return (f"{address} (experts: " + (f"top-{top} per token; " if top is not None else "") + f"{k}"
                + (f" of {total}" if total is not None else "") + " experts hit per call)")
    if loop.kind == "call":
        return address
    if loop.kind == "parfor":
        return f"{address} parfor {loop.bound}"
    container = _container(loop, subs)
    if loop.kind == "for":
        return f"{container}[{ranges(loop.members)}] for {loop.bound}"
    of = f" of {loop.container_size}" if loop.container_size is not None else ""
    ks = [len(p) for p, lane in zip(loop.picks, _pick_lanes(loop))
          if steps is None or lane.get(STEP) in steps] or [len(p) for p in loop.picks]
    k = str(ks[0]) if len(set(ks)) == 1 else f"{min(ks)}..{max(ks)}"
    return f"{container}[*] select {k}{of}"


def _pick_lanes(loop: Loop) -> list[dict[str, Any]]:
    """The first member's lane of each select instance (the picks' lanes are concatenated in order)."""
    out, i = [], 0
    for pick in loop.picks:
        out.append(loop.lanes[i] if i < len(loop.lanes) else {})
        i += len(pick)
    return out


def is_step_loop(loop: Loop) -> bool:
    """The parfor over the session's steps: its i-th iteration is step i."""
    lanes = loop.lanes[: loop.bound]
    return loop.kind == "parfor" and loop.bound > 1 and [lane.get(STEP) for lane in lanes] == list(range(loop.bound))


def groups_text(groups: list[tuple[str, list[int]]], steps: set[Any] | None = None) -> str:
    """`prefill step 0, decode steps 1..3`: the (phase, steps) groups that hold any of `steps` (all when None)."""
    return ", ".join(f"{phase} step{'s' if len(its) > 1 else ''} {ranges(its)}".strip()
                     for phase, its in groups if steps is None or steps & set(its))


def steps_in_sequence(loop: Loop) -> str:
    """For the loop over the session's steps: that they run in sequence, and which is which."""
    if not is_step_loop(loop):
        return ""
    phases: dict[str, list[int]] = {}
    for lane in loop.lanes[: loop.bound]:
        phases.setdefault(str(lane.get(PHASE)), []).append(lane[STEP])
    return f" in sequence (each step needs the previous one's output; {groups_text(list(phases.items()))})"


def apart(loop: Loop, siblings: list[Loop]) -> str:
    """Why a single member (`layers.0`) stands apart from the `for` over its container: the lane keys whose values
    differ, or the class."""
    container, _, index = loop.address.rpartition(".")
    if loop.kind != "call" or not index.isdigit():
        return ""
    other = next((s for s in siblings if s.kind == "for" and s.container == container), None)
    if other is None:
        return ""
    diffs = [f"class {loop.class_name}, there {other.class_name}"] if loop.class_name != other.class_name else []
    for key in dict.fromkeys(k for lane in loop.lanes + other.lanes for k in lane if k not in _SHOWN_ELSEWHERE):
        mine = {value_text(lane.get(key)) for lane in loop.lanes}
        theirs = {value_text(lane.get(key)) for lane in other.lanes}
        if not mine & theirs:
            diffs.append(f"{key}={'/'.join(sorted(mine))}, there {'/'.join(sorted(theirs))}")
    return f"  apart from {short(other)}: {'; '.join(diffs)}" if diffs else ""


def headline(loop: Loop, subs: Subs = (), top: bool = False) -> str:
    axis = f" axis={loop.axis}" if loop.axis else ""
    stage = f"  {{{loop.stage}}}" if loop.stage else ""
    if top and loop.lanes and all(lane.get(BEFORE_FIRST_FORWARD) for lane in loop.lanes):
        stage += "  (step 0, before the first forward)"
    line = short(loop, subs)
    if loop.kind == "parfor":
        lanes = loop.lanes[: loop.bound]
        shown = " | ".join(fmt_lane(l) for l in lanes[:4]) + (" | ..." if len(lanes) > 4 else "")
        return f"{line}{axis}{steps_in_sequence(loop)} [{shown}]{stage}"
    if loop.kind == "for":
        vary, summary = varying(loop), lane_summary(loop.lanes, tuple(loop.distinguish))
        return (f"{line}{axis} ({loop.class_name}){' ' + vary if vary else ''}"
                f"{' [' + summary + ']' if summary else ''}{stage}")
    if loop.kind == "select":
        return (f"{line}{axis} ({len(loop.picks)} calls; ids ever picked [{ranges(loop.members)}]; select k = "
                f"experts hit per call){stage}")
    summary = lane_summary(loop.lanes)
    return f"{line}{' [' + summary + ']' if summary else ''}{stage}"


def rounds_line(group: list[Loop], subs: Subs = ()) -> str:
    """The loop over rounds that alternating parfors share: `rounds over view: 2 rounds, each calls A, then B`."""
    axes = {loop.axis for loop in group}
    over = f" over {axes.pop()}" if len(axes) == 1 and None not in axes else ""
    order = ", then ".join(name(substitute(loop.address, subs), loop.class_name) for loop in group)
    return (f"rounds{over}: {group[0].bound} rounds, each calls {order} (calls alternate: round i runs iteration i of "
            "each)")


def grouped(loops: list[Loop]) -> list[Loop | list[Loop]]:
    """`loops` with each set of alternating parfors (`Loop.rounds`) gathered, in round order, where its first
    member stands."""
    out: list[Loop | list[Loop]] = []
    for loop in loops:
        if not loop.rounds:
            out.append(loop)
        elif loop.address == loop.rounds[0]:
            out.append([next(m for m in loops if m.address == a) for a in loop.rounds])
    return out


def loop_lines(loops: list[Loop], depth: int = 0, subs: Subs = ()) -> list[str]:
    lines = []
    for item in grouped(loops):
        if isinstance(item, list):
            lines.append("  " * depth + rounds_line(item, subs))
            lines.extend(line for loop in item for line in _loop_lines(loop, loops, depth + 1, subs))
        else:
            lines.extend(_loop_lines(item, loops, depth, subs))
    return lines


def _loop_lines(loop: Loop, siblings: list[Loop], depth: int, subs: Subs) -> list[str]:
    lines = ["  " * depth + headline(loop, subs, top=depth == 0 or bool(loop.rounds)) + apart(loop, siblings)]
    many = len(loop.variants) > 1
    inner = member_subs(loop, subs)
    for v in loop.variants:
        if many:
            lines.append("  " * (depth + 1) + f"iterations [{ranges(v.iterations)}]:")
        lines.extend(loop_lines(v.body, depth + 1 + many, inner))
    return lines


def stage_nest(loop: Loop, subs: Subs = (), steps: frozenset[int] | None = None) -> str:
    """One stage's loop nest on one line: a loop and, in braces, the loops of the same stage inside it."""
    inner = member_subs(loop, subs)
    kids = [stage_line(v.body, loop.stage, inner, steps) for v in loop.variants]
    kids = [k for k in kids if k]
    return short(loop, subs, steps) + (" { " + "; ".join(kids) + " }" if kids else "")


def stage_line(loops: list[Loop], stage: str | None, subs: Subs = (), steps: frozenset[int] | None = None) -> str:
    """The loop nests of `stage` found in `loops`, each after the loops of other stages that repeat it
    (`model.vision_tower parfor 2 > model.vision_tower.vision_encoder { ... }`); "" when the stage is empty."""
    return "; ".join(" > ".join([short(a, s, steps) for a, s in chain] + [stage_nest(loop, sub, steps)])
                     for chain, sub, loop in same_stage(loops, stage, (), subs))


def same_stage(loops: list[Loop], stage: str | None, chain: tuple, subs: Subs) -> list[tuple[tuple, Subs, Loop]]:
    """The top-most loops of `stage` among `loops` and their descendants, with the enclosing repeats."""
    out = []
    for loop in loops:
        if loop.stage == stage:
            out.append((chain, subs, loop))
            continue
        outer = chain + ((loop, subs),) if loop.kind != "call" else chain
        for v in loop.variants:
            out.extend(same_stage(v.body, stage, outer, member_subs(loop, subs)))
    return out
