"""The expert ledger: expert selection per MoE call, from the lane contract's MoE keys, and its summary."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from ..events.lanes import EXPERTS_HIT, EXPERTS_IMPLEMENTATION, EXPERTS_TOTAL, TOKENS_PER_EXPERT
from ..events.schema import CallEvent


def moe_table(events: Iterable[CallEvent]) -> dict[str, Any] | None:
    """One row per MoE call (address, call, step, k = experts hit, experts, tokens per expert, experts_total = M) and
    a summary:
    k min/mean/max, the expert-load imbalance (per MoE node, the busiest expert's tokens over the mean over all its
    experts, unused ones counting 0; the largest over nodes) and the experts implementations seen."""
    events = sorted(events, key=lambda e: e.seq)
    rows = [{"address": e.address, "call": e.call_index, "step": e.step, "k": len(e.lane[EXPERTS_HIT]),
             "experts": list(e.lane[EXPERTS_HIT]), "tokens": list(e.lane.get(TOKENS_PER_EXPERT, [])),
             EXPERTS_TOTAL: e.lane.get(EXPERTS_TOTAL)}
            for e in events if EXPERTS_HIT in e.lane]
    if not rows:
        return None
    ks = [r["k"] for r in rows]
    impls = sorted({str(e.lane[EXPERTS_IMPLEMENTATION]) for e in events if EXPERTS_IMPLEMENTATION in e.lane})
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
                                      "experts_implementation": impls}}
