"""The work section as rows of text: per stage and step group, the session, and the roofline bounds when a
hardware entry was chosen. Text and Markdown lay out the same rows."""

from __future__ import annotations

from typing import Any

HEADER = ["group", "stage", "GFLOP", "weights MB", "activations MB", "KV read MB", "KV written MB", "FLOP/byte"]
BOUND_HEADER = ["group", "stage", "compute ms", "memory ms", "bound ms", "bound by"]


def _num(value: float, scale: float) -> str:
    return f"{value / scale:,.3f}"


def _metrics(group: str, stage: str, r: dict[str, Any]) -> list[str]:
    return [group, stage, _num(r["flops"], 1e9), *(_num(r[k], 1e6) for k in (
        "weight_bytes", "activation_bytes", "kv_read_bytes", "kv_written_bytes")), str(r["intensity"])]


def stage_rows(work: dict[str, Any]) -> list[list[str]]:
    return [_metrics(r["group"], r["stage"], r) for r in work["stages"]] + [_metrics("session", "all", work["total"])]


def bound_rows(roof: dict[str, Any]) -> list[list[str]]:
    rows = [[r["group"], r["stage"], _num(r["compute_s"], 1e-3), _num(r["memory_s"], 1e-3),
             _num(r["bound_s"], 1e-3), r["bound"]] for r in roof["stages"]]
    return rows + [["session", "all", "", "", _num(roof["total_bound_s"], 1e-3), ""]]


def caption(work: dict[str, Any]) -> str:
    steps = work["probed_steps"]
    derived = work.get("derived_steps")
    return (f"work per stage and step group (steps {steps[0]}..{steps[-1]} traced"
            + (f", steps {derived[0]}..{derived[1]} derived from decode steps 1-2" if derived else "")
            + f"; {work['compute_dtype']} products)")


def bound_caption(roof: dict[str, Any]) -> str:
    return (f"roofline lower bounds on {roof['hardware']} ({roof['dtype']} peak {roof['peak_flops'] / 1e12:,.1f} "
            f"TFLOP/s, {roof['bandwidth'] / 1e12:,.2f} TB/s): {roof['label']}")


def work_notes(work: dict[str, Any]) -> list[str]:
    notes = list(work["notes"])
    if work["uncounted"]:
        notes.append("incomplete: FLOPs not counted for " + ", ".join(f"{f} ({n} ops)" for f, n in
                                                                      work["uncounted"].items()))
    return notes


def aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in [header] + rows]
