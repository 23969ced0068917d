"""Text and Markdown forms of a report: one line per loop, indented by nesting, lanes labelled."""

from __future__ import annotations

from typing import Any

from .loops import Loop, substitute
from .report import Report

# lane keys that every event lane carries; shown once per step, not on every loop
_QUIET = {"step", "phase", "before_first_forward"}


def name(address: str, class_name: str = "") -> str:
    return address or f"<root {class_name}>".replace(" >", ">")


def fmt_lane(lane: dict[str, Any]) -> str:
    return " ".join(f"{k}={_v(v)}" for k, v in lane.items() if k not in _QUIET)


def _v(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_v(x) for x in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_v(x)}" for k, x in value.items()) + "}"
    return str(value)


def _ranges(indices: list[int]) -> str:
    out, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}..{x}")
            start = None
    return ",".join(out)


def varying(loop: Loop) -> str:
    """Lane keys whose values differ between the members of one `for` instance (e.g. global vs window blocks)."""
    members = loop.lanes[: loop.bound]
    keys = [k for k in (members[0] if members else {}) if k not in _QUIET
            and len({_v(m.get(k)) for m in members}) > 1 and not k.endswith(("_len", "tokens", "batch"))]
    parts = []
    for k in keys:
        groups: dict[str, list[int]] = {}
        for idx, m in zip(loop.members, members):
            groups.setdefault(_v(m.get(k)), []).append(idx)
        parts.append(f"{k}: " + "; ".join(f"{v} at [{_ranges(ix)}]" for v, ix in groups.items()))
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
    hits = [len(lane["experts_hit"]) for lane in loop.lanes
            if "experts_hit" in lane and (steps is None or lane.get("step") in steps)]
    if hits and loop.kind == "call":  # a MoE call whose experts are not modules (the ledger lives in its lanes)
        k = str(hits[0]) if len(set(hits)) == 1 else f"{min(hits)}..{max(hits)}"
        total = loop.lanes[0].get("experts_total")
        return f"{address} (experts: select {k}" + (f" of {total})" if total is not None else ")")
    if loop.kind == "call":
        return address
    if loop.kind == "parfor":
        return f"{address} parfor {loop.bound}"
    container = _container(loop, subs)
    if loop.kind == "for":
        return f"{container}[{_ranges(loop.members)}] for {loop.bound}"
    of = f" of {loop.total}" if loop.total is not None else ""
    ks = [len(p) for p, lane in zip(loop.picks, _pick_lanes(loop))
          if steps is None or lane.get("step") in steps] or [len(p) for p in loop.picks]
    k = str(ks[0]) if len(set(ks)) == 1 else f"{min(ks)}..{max(ks)}"
    return f"{container}[*] select {k}{of}"


def _pick_lanes(loop: Loop) -> list[dict[str, Any]]:
    """The first member's lane of each select instance (the picks' lanes are concatenated in order)."""
    out, i = [], 0
    for pick in loop.picks:
        out.append(loop.lanes[i] if i < len(loop.lanes) else {})
        i += len(pick)
    return out


def headline(loop: Loop, subs: Subs = (), top: bool = False) -> str:
    axis = f" axis={loop.axis}" if loop.axis else ""
    stage = f"  {{{loop.stage}}}" if loop.stage else ""
    if top and loop.lanes and all(lane.get("before_first_forward") for lane in loop.lanes):
        stage += "  (step 0, before the first forward)"
    line = short(loop, subs)
    if loop.kind == "parfor":
        lanes = loop.lanes[: loop.bound]
        shown = " | ".join(fmt_lane(l) for l in lanes[:4]) + (" | ..." if len(lanes) > 4 else "")
        return f"{line}{axis} [{shown}]{stage}"
    if loop.kind == "for":
        vary = varying(loop)
        return f"{line}{axis} ({loop.class_name}){' ' + vary if vary else ''}{stage}"
    if loop.kind == "select":
        return (f"{line}{axis} ({len(loop.picks)} calls; ids ever picked [{_ranges(loop.members)}]){stage}")
    return f"{line}{stage}"


def loop_lines(loops: list[Loop], depth: int = 0, subs: Subs = ()) -> list[str]:
    lines = []
    for loop in loops:
        lines.append("  " * depth + headline(loop, subs, top=depth == 0))
        many = len(loop.variants) > 1
        inner = member_subs(loop, subs)
        for v in loop.variants:
            if many:
                lines.append("  " * (depth + 1) + f"iterations [{_ranges(v.iterations)}]:")
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


def stage_lines(report: Report) -> list[str]:
    lines = []
    for group in report.stage_view:
        lines.append(f"{_steps(group['steps'])} ({group['phase']}):")
        lines += [f"  {s}: {nest or 'empty'}" for s, nest in group["stages"].items()]
    return lines


def _steps(steps: list[int]) -> str:
    return ("step " if len(steps) == 1 else "steps ") + _ranges(steps)


def step_lines(report: Report) -> list[str]:
    return [f"step {s['step']}: {s['phase']} " + fmt_lane(s) for s in report.steps]


def to_text(report: Report) -> str:
    head = [f"loopmeta report: {report.model_class}"
            + (f" (config {report.config})" if report.config else " (config-free)") + f", from {report.source}"]
    parts = head + [""] + loop_lines(report.loops)
    if report.stage_view:
        parts += ["", "stages per step:"] + ["  " + s for s in stage_lines(report)]
    if report.steps:
        parts += ["", "steps:"] + ["  " + s for s in step_lines(report)]
    if report.moe:
        s = report.moe["summary"]
        parts += ["", f"moe: {s['calls']} MoE calls, k min {s['k_min']} / mean {s['k_mean']} / max {s['k_max']}, "
                      f"expert-load imbalance (busiest expert / mean over all experts) {s['imbalance']}"
                      + (f", experts implementation {'/'.join(s['experts_implementation'])}"
                         if s["experts_implementation"] else "")]
    parts += [f"note: {n}" for n in report.notes]
    return "\n".join(parts)


def to_markdown(report: Report) -> str:
    lines = [f"# loopmeta report: {report.model_class}", "",
             f"- config: {report.config or 'none (config-free)'}", f"- source: {report.source}",
             f"- nodes: {len(report.counts)}, calls: {sum(report.counts.values())}", "", "## Loop nest", "", "```"]
    lines += loop_lines(report.loops) + ["```"]
    if report.stage_view:
        lines += ["", "## Stages per step", "", "| steps | phase | stage | loop nest |", "|---|---|---|---|"]
        lines += [f"| {_ranges(g['steps'])} | {g['phase']} | {s} | `{nest}` |" if nest else
                  f"| {_ranges(g['steps'])} | {g['phase']} | {s} | empty |"
                  for g in report.stage_view for s, nest in g["stages"].items()]
    if report.steps:
        lines += ["", "## Steps", "", "| step | phase | lane |", "|---|---|---|"]
        lines += [f"| {s['step']} | {s['phase']} | {fmt_lane(s)} |" for s in report.steps]
    if report.moe:
        lines += ["", "## MoE selection", "", "| node | step | k | experts | tokens |", "|---|---|---|---|---|"]
        lines += [f"| {r['address']} | {r['step']} | {r['k']} | {_v(r['experts'])} | {_v(r['tokens'])} |"
                  for r in report.moe["rows"]]
    gemms = (report.probe or {}).get("gemms")
    if gemms:
        lines += ["", "## GEMM shapes in the probed steps (nn.Linear calls)", "",
                  "| step | stage | node | M | N | K | calls |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {g['step']} | {g['stage'] or ''} | {g['node']} | {g['M']} | {g['N']} | {g['K']} | {g['calls']} |"
                  for g in gemms]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines)
