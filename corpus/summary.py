"""The corpus's aggregates as text (`corpus.md`, also printed) and as a page of histograms (`corpus.html`)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..common.files import write_atomically


def summary_text(data: dict[str, Any]) -> str:
    """Markdown: pages, then loop bounds, session bounds, expert load, k per step and structure classes."""
    pages = data["pages"]
    lines = [f"# loopmeta corpus: {pages['total']} pages, {pages['with_result']} with a result, "
             f"{len(pages['errors'])} with an error, {len(pages['missing'])} missing"]
    lines += [f"- error: {e['page']}: {e['error']}" for e in pages["errors"]]
    if pages["missing"]:
        lines.append(f"- without a result (rerun with the same --out to run them): {', '.join(pages['missing'])}")
    lines += ["", "## loop bounds over the pages with a result", ""]
    for loop in data["loops"]:
        shares = ", ".join(f"{d['bound']} on {d['share']:.0%} ({d['pages']})" for d in loop["distribution"])
        axis = f" axis={loop['axis']}" if loop["axis"] else ""
        lines.append(f"- {loop['loop']} {loop['kind']}{axis}: {shares}")
    lines += ["", "## per-page bounds", "", "| bound | min | p50 | p90 | p99 | max | mean | histogram (value: pages) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, b in data["bounds"].items():
        hist = ", ".join(f"{v}: {n}" for v, n in b.get("histogram", []))
        lines.append(f"| {name} | {b['min']} | {b['p50']} | {b['p90']} | {b['p99']} | {b['max']} | {b['mean']} | "
                     f"{hist} |")
    experts = data["experts"]
    if experts["layers"]:
        lines += ["", f"## expert load (imbalance {experts['imbalance']}: the busiest expert's tokens over the mean, "
                      "the largest over layers)", "", "| layer | experts hit | tokens | imbalance |", "|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['experts_hit']} of {r['experts_total']} | {r['tokens']} | {r['imbalance']} |"
                  for r in experts["layers"]]
        lines += ["", "| step | phase | MoE calls | k min | k mean | k max |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['phase']} | {r['calls']} | {r['k_min']} | {r['k_mean']} | {r['k_max']} |"
                  for r in data["k_per_step"]]
    lines += ["", f"## loop structures (nests equal but for their bounds): {len(data['structures'])}", ""]
    for s in data["structures"]:
        lines += [f"- {s['structure']}: {s['pages']} pages (e.g. {s['example']})"]
    return "\n".join(lines) + "\n"


def write_html(data: dict[str, Any], path: Path) -> list[Path]:
    """corpus.html: a histogram per per-page bound and the corpus's expert load as a heat map (layer x expert,
    matplotlib, no script); the text below."""
    from ..writers.charts import bar_chart, experts_chart

    charts = [bar_chart(f"{name} (pages per value)", [(str(v), n) for v, n in b["histogram"]])
              for name, b in data["bounds"].items() if b.get("histogram")]
    experts = data["experts"]
    moe = {"rows": [{"address": f"layer {layer['layer']}", "experts_total": layer["experts_total"],
                     "experts": [r["expert"] for r in experts["load"] if r["layer"] == layer["layer"]],
                     "tokens": [r["tokens"] for r in experts["load"] if r["layer"] == layer["layer"]]}
                    for layer in experts["layers"]]}
    charts.append(experts_chart(moe) or "")
    body = "\n".join(f"<figure>{c}</figure>" for c in charts)
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>loopmeta corpus</title></head><body>\n"
            f"<h1>loopmeta corpus</h1>\n{body}\n<pre>{html.escape(summary_text(data))}</pre>\n</body></html>\n")
    write_atomically(path, page)
    return [path]
