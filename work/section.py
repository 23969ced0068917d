"""The report's `work` section: per step x stage rows (the base table), and from them the totals per stage x step
group (prefill, decode), per op class, per step and for the session. Layout: docs/report-format.md#work.

Invariant: every total is a sum of `step_stage` rows (or, for `classes`, of the same per-class totals), so
`summaries()` rebuilt from a read report gives the numbers it holds.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .account import METRICS, Accountant, Ledger, SessionWork, session_work
from .formulas import op_work
from .steps import place_ops

CONVENTIONS = ("FLOPs by the torch.utils.flop_counter conventions (2*M*N*K per product; convolutions and attention "
               "as their products; other ops 0); bytes as the program is written, unfused: every op reads its inputs "
               "and writes its output, views move nothing; weights once per module call, stacked experts only as "
               "hit; KV-cache bytes of the cached attention nodes (docs/analytic.md)")


def _with_ratios(row: dict[str, Any]) -> dict[str, Any]:
    total = row["weight_bytes"] + row["activation_bytes"] + row["kv_read_bytes"] + row["kv_written_bytes"]
    row["bytes"] = total
    row["intensity"] = round(row["flops"] / total, 3) if total else None
    return row


def _sum(rows: list[list[Any]], start: int) -> dict[str, int]:
    return {m: sum(r[start + i] for r in rows) for i, m in enumerate(METRICS)}


def summaries(work: dict[str, Any], phases: dict[int, str]) -> dict[str, Any]:
    """Per stage x group, per step and for the session, from `work["step_stage"]`."""
    rows = work["step_stage"]["rows"]
    groups: dict[tuple[str, str], list[list[Any]]] = {}
    steps: dict[int, list[list[Any]]] = {}
    for r in rows:
        groups.setdefault((phases.get(r[0], "?"), r[1]), []).append(r)
        steps.setdefault(r[0], []).append(r)
    return {
        "stages": [_with_ratios({"group": g, "stage": s, **_sum(rs, 2)}) for (g, s), rs in groups.items()],
        "steps": [_with_ratios({"step": s, "phase": phases.get(s, "?"), **_sum(rs, 2)}) for s, rs in steps.items()],
        "total": _with_ratios(_sum(rows, 2)),
    }


def work_section(sw: SessionWork, phases: dict[int, str], compute_dtype: str | None) -> dict[str, Any]:
    """The `work` section for a session's totals."""
    rows, classes = [], {}
    for step in sorted(sw.totals):
        by_stage: dict[str, list[int]] = {}
        for (stage, cls), values in sw.totals[step].items():
            acc = by_stage.setdefault(stage, [0] * len(METRICS))
            by_class = classes.setdefault((phases.get(step, "?"), stage, cls), [0] * len(METRICS))
            for i, v in enumerate(values):
                acc[i] += v
                by_class[i] += v
        rows += [[step, stage, *values] for stage, values in sorted(by_stage.items())]
    derived = sorted(set(sw.totals) - set(sw.probed))
    work = {"conventions": CONVENTIONS, "compute_dtype": compute_dtype, "probed_steps": sw.probed,
            "derived_steps": [derived[0], derived[-1]] if derived else None,
            "uncounted": dict(sorted(sw.uncounted.items())), "notes": sw.notes,
            "step_stage": {"columns": ["step", "stage", *METRICS], "rows": rows},
            "classes": [_with_ratios({"group": g, "stage": s, "class": c, **dict(zip(METRICS, v))})
                        for (g, s, c), v in sorted(classes.items())]}
    work.update(summaries(work, phases))
    return work


def compute_dtype(placed: list[Any], works: list[Any]) -> str | None:
    """The dtype of the products that do most FLOPs (the peak a roofline should use)."""
    by_dtype: Counter[str] = Counter()
    for p, w in zip(placed, works):
        if w.flops:
            by_dtype[p.op.output.dtype] += w.flops
    return by_dtype.most_common(1)[0][0] if by_dtype else None


OP_COLUMNS = ["step", "stage", "node", "call", "func", "class", *METRICS, "output_bytes", "dtype", "inputs", "output"]


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def op_rows(placed: list[Any], works: list[Any], acct: Any) -> dict[str, Any]:
    """The per-op table of the probed steps, with the session's rules applied (weights once per call and scaled to
    the experts hit; KV bytes of cached attention); views, which move nothing, are left out. FLOPs are None where
    unknown."""
    rows, seen, step = [], set(), None
    for p, w in zip(placed, works):
        if p.step != step:
            seen, step = set(), p.step
        values = acct.metrics(p, w, seen)
        if w.cls == "view":
            continue
        shapes = ";".join(_shape(t.shape) + ("@" + t.param if t.param else "") for t in p.op.inputs + p.op.params)
        rows.append([p.step, p.stage or "other", p.op.call[0], p.op.call[1], p.op.func, w.cls,
                     w.flops, *values[1:], w.act_written, p.op.output.dtype, shapes, _shape(p.op.output.shape)])
    return {"columns": OP_COLUMNS, "rows": rows}


def work_from_probe(tree: Any, stage_of: dict[str, str | None], step_address: str, phases: dict[int, str],
                    moe: dict[str, Any] | None) -> dict[str, Any]:
    """The work section of a session whose first steps `tree` traced (`phases`: every step of the session)."""
    placed = place_ops(tree, stage_of, step_address)
    works = [op_work(p.op) for p in placed]
    sw = session_work(placed, phases, moe)
    work = work_section(sw, phases, compute_dtype(placed, works))
    work["ops"] = op_rows(placed, works, Accountant(Ledger.of(moe), sw.cache))
    return work
