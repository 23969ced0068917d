"""The report as one self-contained HTML page (`report.html`): no script, no network, every picture inline.

Sections: the loop nest drawing (`report.svg`'s SVG, when the `dot` program exists) and its text, the stage view
per step group, the steps with a chart of their lengths, the MoE ledger as a heat map, the work and roofline tables
when the report has a work section, and the notes. An incomplete report says so first, then its warnings, as in
every other form.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ..report.inputs import input_lines
from ..report.notation import STEP_RUNS_KEY, loop_lines, ranges, step_runs
from ..report.schema import Report
from .charts import experts_chart, steps_chart
from .text import moe_line
from .work import BOUND_HEADER, HEADER, bound_caption, bound_rows, caption, stage_rows, work_notes

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #1d1d1f; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.incomplete, .warning { background: #ffebe9; border: 1px solid #cf222e; padding: .6em; font-weight: bold; }
.figure { overflow-x: auto; } .figure svg { max-width: 100%; height: auto; }
"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        text = escape(str(value))
        numeric = text.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()
        return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, *parts: str | None) -> str:
    return f"<h2>{escape(title)}</h2>\n" + "\n".join(p for p in parts if p)


def _figure(svg: str | None, missing: str) -> str:
    return f'<div class="figure">{svg}</div>' if svg else f"<p><em>{escape(missing)}</em></p>"


def _work(work: dict[str, Any]) -> list[str]:
    parts = [_section("Work", f"<p>{escape(caption(work))}</p>", _table(HEADER, stage_rows(work)),
                      "".join(f"<p><strong>{escape(n)}</strong></p>" for n in work_notes(work)))]
    if work.get("roofline"):
        roof = work["roofline"]
        parts.append(_section("Roofline bounds", f"<p>{escape(bound_caption(roof))}</p>",
                              _table(BOUND_HEADER, bound_rows(roof))))
    return parts


def to_html(report: Report, drawing: str | None, drawing_missing: str = "no drawing") -> str:
    """The page for `report`, with `drawing` (the loop nest's SVG) inline, or `drawing_missing` said in its place."""
    parts = [f"<h1>loopmeta report: {escape(report.model_class)}</h1>"]
    if report.incomplete:
        parts.append(f'<p class="incomplete">{escape(report.incomplete)}</p>')
    parts += [f'<p class="warning">WARNING: {escape(w)}</p>' for w in report.warnings]
    parts.append(f"<p>config {escape(report.config or 'none (config-free)')}, from {escape(report.source)}; "
                 f"{len(report.counts)} instrumented nodes, {sum(report.counts.values())} calls</p>")
    parts.append(_section("Loop nest", _figure(drawing, drawing_missing),
                          "<pre>" + escape("\n".join(loop_lines(report.loops))) + "</pre>"))
    if report.stage_view:
        parts.append(_section("Stages per step group", _table(
            ["steps", "phase", "stage", "loop nest"],
            [[ranges(g["steps"]), g["phase"], s, nest or "empty"] for g in report.stage_view
             for s, nest in g["stages"].items()])))
    if report.steps:
        runs = step_runs(report.steps)
        lane = f"lane ({STEP_RUNS_KEY})" if any(r.counts for r in runs) else "lane"
        parts.append(_section("Steps", _figure(steps_chart(report.steps), "no numeric step lanes to plot"),
                              _table(["step", "phase", lane], [[r.steps, r.phase, r.lane] for r in runs])))
    inputs = input_lines(report.steps)
    if inputs:
        parts.append(_section("Inputs", "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in inputs) + "</ul>"))
    if report.moe:
        parts.append(_section("MoE expert load", f"<p>{escape(moe_line(report.moe['summary']))}</p>",
                              _figure(experts_chart(report.moe), "no expert ledger")))
    if report.work:
        parts += _work(report.work)
    if report.notes:
        parts.append(_section("Notes", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>"))
    title = escape(f"loopmeta: {report.model_class}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")
