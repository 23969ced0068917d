"""One page's rows for the store: its calls (from the event table), its loops and MoE ledger (from the report the
single-session path built) and its session row with the loop bounds (docs/corpus.md#store).

Invariants: nothing here infers loops; every bound is read from the `Report` or the config's `bounds` function.
Two pages share a structure class when their nests differ only in bounds: the class is a digest of the nest with
bounds, members picked, lanes and iteration positions left out, a single call counting as a parfor of 1.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..events import lanes
from ..events.labels import layer_of
from ..events.table import EventTable
from ..merge.loops import Loop, substitute
from ..report.notation import member_subs, name, ranges
from ..report.schema import Report

_COLUMN_KEYS = (lanes.STEP, lanes.PHASE)  # lane keys that are columns of their own


def call_rows(table: EventTable) -> dict[str, list[Any]]:
    """One row per call, in start order: seq, step, phase, node (address), class, call index, parent (seq of the
    parent call, -1 for none), role, stage, and the lane as JSON text (typed into columns by the store)."""
    c, nodes = table.columns, table.nodes
    order = sorted(range(len(table)), key=c["seq"].__getitem__)
    texts = [json.dumps({k: v for k, v in lane.items() if k not in _COLUMN_KEYS}, sort_keys=True)
             for lane in table.lanes]
    node = [nodes[c["node"][r]] for r in order]
    return {"seq": [c["seq"][r] for r in order], "step": [c["step"][r] for r in order],
            "phase": [lanes.PHASES[c["phase"][r]] for r in order], "node": [n.address for n in node],
            "class_name": [n.class_name for n in node], "call_index": [c["call_index"][r] for r in order],
            "parent": [c["parent"][r] for r in order], "role": [n.role for n in node],
            "stage": [n.stage for n in node], "lane": [texts[c["lane"][r]] for r in order]}


def loop_rows(loops: list[Loop]) -> dict[str, list[Any]]:
    """One row per distinct loop of the nest: `loop` (its name, bound-free: `model.vision_tower`,
    `model.layers[1..11]`, `model.layers[i].mlp.experts[*]`), kind, bound (the largest of its occurrences), axis,
    role, stage."""
    found: dict[str, dict[str, Any]] = {}

    def visit(nest: list[Loop], subs: tuple) -> None:
        for loop in nest:
            key = _loop_name(loop, subs)
            row = found.setdefault(key, {"loop": key, "kind": loop.kind, "bound": 0, "axis": loop.axis,
                                         "role": loop.role, "stage": loop.stage})
            row["bound"] = max(row["bound"], loop.bound)
            for v in loop.variants:
                visit(v.body, member_subs(loop, subs))

    visit(loops, ())
    rows = [found[k] for k in sorted(found)]
    return {f: [r[f] for r in rows] for f in ("loop", "kind", "bound", "axis", "role", "stage")}


def _loop_name(loop: Loop, subs: tuple) -> str:
    if loop.kind in ("call", "parfor"):
        return name(substitute(loop.address, subs), loop.class_name)
    container = substitute(loop.container or "", subs)
    return f"{container}[{ranges(loop.members)}]" if loop.kind == "for" else f"{container}[*]"


def expert_rows(report: Report) -> dict[str, list[Any]]:
    """The MoE ledger as one row per (MoE call, expert hit): step, phase, layer, node, call, expert, tokens,
    experts_total (M) and top_k."""
    phase = {s[lanes.STEP]: s.get(lanes.PHASE) for s in report.steps}
    rows = [(r["step"], phase.get(r["step"]), layer_of(r["address"]), r["address"], r["call"], e, t,
             r[lanes.EXPERTS_TOTAL], r[lanes.TOP_K])
            for r in (report.moe or {}).get("rows", []) for e, t in zip(r["experts"], r["tokens"])]
    names = ("step", "phase", "layer", "node", "call", "expert", "tokens", "experts_total", "top_k")
    return {f: [r[i] for r in rows] for i, f in enumerate(names)}


def session_row(report: Report, bounds: dict[str, Any]) -> dict[str, Any]:
    """The page's loop bounds: steps, prefill length (the first step's `seq_len`), tokens made (one per step),
    decode steps, the structure class and its bound-free text, then the config's named bounds."""
    steps = report.steps
    text = structure_text(report.loops)
    return {"steps": len(steps), "prefill_len": steps[0].get("seq_len") if steps else None,
            "generated_tokens": len(steps),
            "decode_steps": sum(1 for s in steps if s.get(lanes.PHASE) == lanes.DECODE),
            "structure": hashlib.sha1(text.encode("utf-8")).hexdigest()[:12], "structure_text": text, **bounds}


def structure_text(loops: list[Loop], depth: int = 0, subs: tuple = ()) -> str:
    """The nest without its bounds: one line per loop (`call` and `parfor` both read `parfor`), a line per
    variant of a loop with several; for stacks the members' range (fixed by the model) is kept."""
    lines = []
    for loop in loops:
        kind = "parfor" if loop.kind == "call" else loop.kind
        lines.append("  " * depth + f"{_loop_name(loop, subs)} {kind}" + (f" axis={loop.axis}" if loop.axis else ""))
        inner = member_subs(loop, subs)
        for i, v in enumerate(loop.variants):
            if len(loop.variants) > 1:
                lines.append("  " * (depth + 1) + f"variant {i + 1}:")
            body = structure_text(v.body, depth + 1 + (len(loop.variants) > 1), inner)
            lines += [body] if body else []
    return "\n".join(lines)
