"""The Markdown report: the same content as the text report, with tables for stages, steps, MoE and GEMMs."""

from __future__ import annotations

from ..report.inputs import input_lines
from ..report.notation import STEP_RUNS_KEY, loop_lines, ranges, step_runs, value_text
from ..report.schema import Report
from .text import moe_line
from .work import BOUND_HEADER, HEADER, bound_caption, bound_rows, caption, stage_rows, work_notes


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def to_markdown(report: Report) -> str:
    lines = [f"# loopmeta report: {report.model_class}", ""]
    lines += [f"> **{report.incomplete}**", ""] if report.incomplete else []
    lines += [line for w in report.warnings for line in (f"> **WARNING: {w}**", "")]
    if report.source == "events":
        lines += ["- tensor values read: " + ("; ".join(report.reads_values) or "none (shapes and Python values only)")]
    lines += [f"- config: {report.config or 'none (config-free)'}", f"- source: {report.source}",
              f"- nodes: {len(report.counts)}, calls: {sum(report.counts.values())}", "", "## Loop nest", "", "```"]
    lines += loop_lines(report.loops) + ["```"]
    if report.stage_view:
        lines += ["", "## Stages per step", ""] + _table(
            ["steps", "phase", "stage", "loop nest"],
            [[ranges(g["steps"]), g["phase"], s, f"`{nest}`" if nest else "empty"]
             for g in report.stage_view for s, nest in g["stages"].items()])
    if report.steps:
        runs = step_runs(report.steps)
        lines += ["", "## Steps", ""] + ([f"({STEP_RUNS_KEY})", ""] if any(r.counts for r in runs) else [])
        lines += _table(["step", "phase", "lane"], [[r.steps, r.phase, r.lane] for r in runs])
    inputs = input_lines(report.steps)
    if inputs:
        lines += ["", "## Inputs", ""] + [f"- {line}" for line in inputs]
    if report.moe:
        lines += ["", "## MoE selection", "", moe_line(report.moe["summary"]), ""] + _table(
            ["node", "step", "top-k per token", "experts hit (k)", "experts", "tokens per expert", "tokens routed"],
            [[r["address"], str(r["step"]), str(r.get("top_k", "")), str(r["k"]), value_text(r["experts"]),
              value_text(r["tokens"]), str(sum(r["tokens"]))] for r in report.moe["rows"]])
    gemms = (report.probe or {}).get("gemms")
    if gemms:
        lines += ["", "## GEMM shapes in the probed steps (nn.Linear calls)", ""] + _table(
            ["step", "stage", "node", "M", "N", "K", "calls"],
            [[str(g["step"]), g["stage"] or "", g["node"], str(g["M"]), str(g["N"]), str(g["K"]), str(g["calls"])]
             for g in gemms])
    if report.work:
        lines += ["", "## Work", "", caption(report.work), ""] + _table(HEADER, stage_rows(report.work))
        lines += [""] + [f"- **{n}**" for n in work_notes(report.work)] if work_notes(report.work) else []
        if report.work.get("roofline"):
            roof = report.work["roofline"]
            lines += ["", bound_caption(roof), ""] + _table(BOUND_HEADER, bound_rows(roof))
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines)
