"""The expert ledger: expert selection per MoE call, from the lane contract's MoE keys, and its summary."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from ..events.lanes import EXPERTS_HIT, EXPERTS_IMPLEMENTATION, EXPERTS_TOTAL, TOKENS_PER_EXPERT, TOP_K
from ..events.schema import CallEvent
from ..events.table import EventTable, as_table


def moe_table(events: EventTable | Iterable[CallEvent]) -> dict[str, Any] | None:
    """One row per MoE call (address, call, step, k = experts hit, experts, tokens per expert, experts_total = M,
    top_k = experts per token) and a summary: k min/mean/max, the top-k values, the expert-load imbalance (per MoE node, the busiest expert's tokens over the mean over all its
    experts, unused ones counting 0; the largest over nodes) and the experts implementations seen."""
    table = as_table(events)
    c, lanes = table.columns, table.lanes
    hit = {i for i, lane in enumerate(lanes) if EXPERTS_HIT in lane}
    rows = []
    for r in table.rows_where("lane", hit):
        lane = lanes[c["lane"][r]]
        rows.append({"address": table.nodes[c["node"][r]].address, "call": c["call_index"][r], "step": c["step"][r],
                     "k": len(lane[EXPERTS_HIT]), "experts": list(lane[EXPERTS_HIT]),
                     "tokens": list(lane.get(TOKENS_PER_EXPERT, [])), EXPERTS_TOTAL: lane.get(EXPERTS_TOTAL),
                     TOP_K: lane.get(TOP_K)})
    if not rows:
        return None
    ks = [r["k"] for r in rows]
    used = set(c["lane"])
    impls = sorted({str(lane[EXPERTS_IMPLEMENTATION]) for i, lane in enumerate(lanes)
                    if EXPERTS_IMPLEMENTATION in lane and i in used})
    load: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    total: dict[str, int] = {}
    for r in rows:
        for expert, tokens in zip(r["experts"], r["tokens"]):
            load[r["address"]][expert] += tokens
        total[r["address"]] = r[EXPERTS_TOTAL] or len(load[r["address"]])
    ratios = [max(per.values()) / (sum(per.values()) / total[a]) for a, per in load.items() if sum(per.values())]
    return {"rows": rows, "summary": {"calls": len(rows), "k_min": min(ks), "k_max": max(ks),
                                      "k_mean": round(sum(ks) / len(ks), 3),
                                      "imbalance": round(max(ratios), 3) if ratios else None,
                                      "experts_implementation": impls,
                                      TOP_K: sorted({r[TOP_K] for r in rows if r[TOP_K] is not None})}}
