"""The plain-text report: the loop nest, the stages per step, the steps and the MoE summary."""

from __future__ import annotations

from ..report.inputs import input_lines
from ..report.notation import STEP_RUNS_KEY, loop_lines, ranges, step_runs
from ..report.schema import Report
from .work import BOUND_HEADER, HEADER, aligned, bound_caption, bound_rows, caption, stage_rows, work_notes


def stage_lines(report: Report) -> list[str]:
    lines = []
    for group in report.stage_view:
        steps = group["steps"]
        lines.append(("step " if len(steps) == 1 else "steps ") + f"{ranges(steps)} ({group['phase']}):")
        lines += [f"  {s}: {nest or 'empty'}" for s, nest in group["stages"].items()]
    return lines


def moe_line(summary: dict) -> str:
    top = "/".join(map(str, summary.get("top_k") or []))
    return (f"moe: {summary['calls']} MoE calls" + (f", top-{top} experts per token" if top else "")
            + f"; distinct experts hit per call (k) min {summary['k_min']} / mean {summary['k_mean']} / max "
            f"{summary['k_max']}; expert-load imbalance {summary['imbalance']} (busiest expert's tokens / mean over "
            "all experts, the largest over MoE layers, prefill and decode pooled)"
            + (f"; experts implementation {'/'.join(summary['experts_implementation'])}"
               if summary["experts_implementation"] else ""))


def to_text(report: Report) -> str:
    parts = [f"loopmeta report: {report.model_class}"
             + (f" (config {report.config})" if report.config else " (config-free)") + f", from {report.source}"]
    parts += [report.incomplete] if report.incomplete else []
    parts += [f"WARNING: {w}" for w in report.warnings]
    if report.source == "events":
        parts += ["tensor values read: " + ("; ".join(report.reads_values) or "none (shapes and Python values only)")]
    parts += [""] + loop_lines(report.loops)
    if report.stage_view:
        parts += ["", "stages per step:"] + ["  " + s for s in stage_lines(report)]
    if report.steps:
        runs = step_runs(report.steps)
        parts += ["", f"steps ({STEP_RUNS_KEY}):" if any(r.counts for r in runs) else "steps:"]
        parts += [f"  step{'s' if '..' in r.steps else ''} {r.steps}: {r.phase} {r.lane}" for r in runs]
    inputs = input_lines(report.steps)
    if inputs:
        parts += ["", "inputs:"] + ["  " + line for line in inputs]
    if report.moe:
        parts += ["", moe_line(report.moe["summary"])]
    if report.work:
        parts += ["", caption(report.work) + ":"] + ["  " + line for line in aligned(HEADER, stage_rows(report.work))]
        parts += [f"work: {n}" for n in work_notes(report.work)]
        if report.work.get("roofline"):
            roof = report.work["roofline"]
            parts += [bound_caption(roof) + ":"] + ["  " + line for line in aligned(BOUND_HEADER, bound_rows(roof))]
    parts += [f"note: {n}" for n in report.notes]
    return "\n".join(parts)
