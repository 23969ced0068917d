"""Text and Markdown forms of a report: one line per loop, indented by nesting, lanes labelled."""

from __future__ import annotations

from typing import Any

from .loops import Loop
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


def headline(loop: Loop, depth: int = 0) -> str:
    axis = f" axis={loop.axis}" if loop.axis else ""
    stage = f"  {{{loop.stage}}}" if loop.stage else ""
    if depth == 0 and loop.lanes and all(lane.get("before_first_forward") for lane in loop.lanes):
        stage += "  (step 0, before the first forward)"
    if loop.kind == "call":
        return f"{name(loop.address, loop.class_name)}{stage}"
    if loop.kind == "parfor":
        lanes = loop.lanes[: loop.bound]
        shown = " | ".join(fmt_lane(l) for l in lanes[:4]) + (" | ..." if len(lanes) > 4 else "")
        return f"{name(loop.address, loop.class_name)} parfor {loop.bound}{axis} [{shown}]{stage}"
    if loop.kind == "for":
        vary = varying(loop)
        return (f"{loop.container}[{_ranges(loop.members)}] for {loop.bound}{axis} ({loop.class_name})"
                f"{' ' + vary if vary else ''}{stage}")
    ks = [len(p) for p in loop.picks]
    of = f" of {loop.total}" if loop.total is not None else ""
    return (f"{loop.container}[*] select k{of}{axis} (k min {min(ks)} / max {max(ks)} over {len(ks)} calls; "
            f"ids ever picked [{_ranges(loop.members)}]){stage}")


def loop_lines(loops: list[Loop], depth: int = 0) -> list[str]:
    lines = []
    for loop in loops:
        lines.append("  " * depth + headline(loop, depth))
        many = len(loop.variants) > 1
        for v in loop.variants:
            if many:
                lines.append("  " * (depth + 1) + f"iterations [{_ranges(v.iterations)}]:")
            lines.extend(loop_lines(v.body, depth + 1 + many))
    return lines


def step_lines(report: Report) -> list[str]:
    return [f"step {s['step']}: {s['phase']} " + fmt_lane(s) for s in report.steps]


def to_text(report: Report) -> str:
    head = [f"loopmeta report: {report.model_class}"
            + (f" (config {report.config})" if report.config else " (config-free)") + f", from {report.source}"]
    parts = head + [""] + loop_lines(report.loops)
    if report.steps:
        parts += ["", "steps:"] + ["  " + s for s in step_lines(report)]
    if report.moe:
        s = report.moe["summary"]
        parts += ["", f"moe: {s['calls']} MoE calls, k min {s['k_min']} / mean {s['k_mean']} / max {s['k_max']}, "
                      f"expert-load imbalance (max/mean tokens) {s['imbalance']}"]
    parts += [f"note: {n}" for n in report.notes]
    return "\n".join(parts)


def to_markdown(report: Report) -> str:
    lines = [f"# loopmeta report: {report.model_class}", "",
             f"- config: {report.config or 'none (config-free)'}", f"- source: {report.source}",
             f"- nodes: {len(report.counts)}, calls: {sum(report.counts.values())}", "", "## Loop nest", "", "```"]
    lines += loop_lines(report.loops) + ["```"]
    if report.steps:
        lines += ["", "## Steps", "", "| step | phase | lane |", "|---|---|---|"]
        lines += [f"| {s['step']} | {s['phase']} | {fmt_lane(s)} |" for s in report.steps]
    if report.moe:
        lines += ["", "## MoE selection", "", "| node | step | k | experts | tokens |", "|---|---|---|---|---|"]
        lines += [f"| {r['address']} | {r['step']} | {r['k']} | {_v(r['experts'])} | {_v(r['tokens'])} |"
                  for r in report.moe["rows"]]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines)
