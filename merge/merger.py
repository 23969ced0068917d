"""Build reports: from a session's events (labelled, every step) and from a TorchLens call tree (structural).

`session_report` refuses events that carry extractor errors, decode steps whose structure differs from the other
decode steps, and (when a probe trace is given) any disagreement between events and the trace (see align.py).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from ..patches.config import ModelConfig
from ..patches.events import CallEvent
from . import calltree
from .loops import Hints, Loop, LoopBuilder, walk
from .report import Report, check_exact


class MergeError(ValueError):
    """Events cannot be turned into an exact report (names the node, call index and the problem)."""


def hints_for(config: ModelConfig | None, sizes: dict[str, int] | None) -> Hints:
    if config is None:
        return Hints(sizes=sizes or {})
    return Hints(select_roles=frozenset(t.role for t in config.targets if t.select),
                 axes={t.role: t.axis for t in config.targets if t.axis}, sizes=sizes or {})


def _scalars(module: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str))}


def annotate_members(loops: list[Loop], model: Any) -> None:
    """Config-free lanes for `for` stacks: the constructor parameters (scalar attributes) in which members differ,
    e.g. SAM blocks with `window_size` 14 or 0. Attributes with a distinct value per member (indices) are left out."""
    for loop in walk(loops):
        if loop.kind != "for":
            continue
        try:
            attrs = [_scalars(model.get_submodule(f"{loop.container}.{m}")) for m in loop.members]
        except AttributeError:
            continue
        keys = [k for k in attrs[0] if all(k in a for a in attrs)
                and 1 < len({repr(a[k]) for a in attrs}) < len(attrs)]
        if keys:
            per_member = [{k: a[k] for k in keys} for a in attrs]
            loop.lanes = [{**lane, **per_member[i % loop.bound]} for i, lane in enumerate(loop.lanes)]


def structural_report(tree: Any, model: Any = None) -> Report:
    """Config-free mode: the exact loop nest of any model from its TorchLens call tree alone (with `model`, stack
    members that differ in constructor parameters are annotated)."""
    roots = calltree.from_trace(tree)
    sizes = {a: len(kids) for a, kids in tree.static_children.items()}
    loops = LoopBuilder(Hints(sizes=sizes)).build(roots)
    counts = calltree.counts(roots)
    check_exact(loops, counts, "structural report")
    if model is not None:
        annotate_members(loops, model)
    return Report(model_class=tree.class_names.get("", "?"), config=None, source="torchlens",
                  loops=loops, counts=counts)


def moe_table(events: Iterable[CallEvent]) -> dict[str, Any] | None:
    """Expert selection per MoE call from the schema's lane fields `experts_hit` / `tokens_per_expert`."""
    rows = [{"address": e.address, "call": e.call_index, "step": e.step, "k": len(e.lane["experts_hit"]),
             "experts": list(e.lane["experts_hit"]), "tokens": list(e.lane.get("tokens_per_expert", [])),
             "of": e.lane.get("experts_total")}
            for e in sorted(events, key=lambda e: e.seq) if "experts_hit" in e.lane]
    if not rows:
        return None
    ks = [r["k"] for r in rows]
    impls = sorted({str(e.lane["experts_implementation"]) for e in events if "experts_implementation" in e.lane})
    load: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    total: dict[str, int] = {}
    for r in rows:
        for expert, tokens in zip(r["experts"], r["tokens"]):
            load[r["address"]][expert] += tokens
        total[r["address"]] = r["of"] or len(load[r["address"]])
    # per MoE node: the busiest expert's tokens over the mean over all its experts (unused ones count as 0)
    ratios = [max(per.values()) / (sum(per.values()) / total[a]) for a, per in load.items() if sum(per.values())]
    imbalance = round(max(ratios), 3) if ratios else None
    return {"rows": rows, "summary": {"calls": len(rows), "k_min": min(ks), "k_max": max(ks),
                                      "k_mean": round(sum(ks) / len(ks), 3), "imbalance": imbalance,
                                      "experts_implementation": impls}}


def _check_steps(loops: list, step_role: str | None) -> None:
    """Every decode step must have the structure of the others (MoE picks aside): one parfor variant."""
    for loop in loops:
        if loop.role != step_role or loop.kind != "parfor":
            continue
        decode = {i for i, lane in enumerate(loop.lanes[: loop.bound]) if lane.get("phase") == "decode"}
        holding = [v for v in loop.variants if decode & set(v.iterations)]
        if len(holding) > 1:
            first = sorted(decode & set(holding[0].iterations))
            odd = sorted(decode & set(holding[1].iterations))
            raise MergeError(f"decode steps {odd} have another call structure than decode steps {first} "
                             f"(compare the events of step {odd[0]} with step {first[0]})")


def stage_view(loops: list[Loop], stages: Iterable[str], step_role: str | None) -> list[dict[str, Any]]:
    """Groups of steps with one phase and one call structure, with every stage's loop nest ("" = empty)."""
    from .render import stage_line

    step_loops = [l for l in loops if l.role == step_role]
    if not stages or len(step_loops) != 1:
        return []
    (steps,) = step_loops
    early = [l for l in loops if l is not steps  # ran before the first forward: step 0
             and all(lane.get("before_first_forward") for lane in l.lanes)]
    groups = []
    for v in steps.variants:
        by_phase: dict[tuple[str, bool], list[int]] = {}
        for i in v.iterations:
            by_phase.setdefault((steps.lanes[i].get("phase", "?"), i == 0 and bool(early)), []).append(i)
        for (phase, with_early), its in by_phase.items():
            body = v.body + (early if with_early else [])
            groups.append({"steps": its, "phase": phase,
                           "stages": {s: stage_line(body, s, (), frozenset(its)) for s in stages}})
    return sorted(groups, key=lambda g: g["steps"][0])


def session_report(events: list[CallEvent], config: ModelConfig | None, *, model_class: str,
                   sizes: dict[str, int] | None = None) -> Report:
    """The labelled loop nest of a whole session from its events; exactness is checked before returning."""
    errors = [e.lane["extract_error"] for e in events if "extract_error" in e.lane]
    if errors:
        raise MergeError("metadata extraction failed, no report is made:\n  " + "\n  ".join(errors))
    raised = [f"{e.address}:{e.call_index} raised {e.error}" for e in events if e.error]
    if raised:
        raise MergeError("the session raised inside instrumented calls:\n  " + "\n  ".join(raised))
    try:
        roots = calltree.from_events(events)
    except ValueError as exc:
        raise MergeError(str(exc)) from None
    loops = LoopBuilder(hints_for(config, sizes)).build(roots)
    counts = calltree.counts(roots)
    check_exact(loops, counts)
    step_role = config.step_target.role if config and config.step_target else None
    _check_steps(loops, step_role)
    steps = [{"step": e.step, **{k: v for k, v in e.lane.items() if k != "step"}}
             for e in sorted(events, key=lambda e: e.seq) if e.role == step_role]
    decoded = [s["step"] for s in steps if s.get("phase") == "decode"]
    again = [s["step"] for s in steps if s.get("phase") == "prefill" and decoded and s["step"] > decoded[0]]
    if again:
        raise MergeError(f"step {again[0]} is a new prefill after decode steps: the session holds more than one "
                         "generation. Instrument one generate() / infer() per session.")
    notes = []
    top = [e for e in events if e.parent is None and e.role != step_role]
    early = sorted({e.address for e in top if e.lane.get("before_first_forward")})
    if early:
        notes.append(f"ran before the first forward of the session, counted in step 0: {', '.join(early)}")
    between = sorted({e.address for e in top if not e.lane.get("before_first_forward")})
    if between:
        notes.append(f"ran outside any forward after the first one (not in the stage view): {', '.join(between)}")
    report = Report(model_class=model_class, config=config.name if config else None, source="events",
                    loops=loops, counts=counts, steps=steps, moe=moe_table(events), notes=notes,
                    stage_view=stage_view(loops, config.stages if config else (), step_role))
    return report
