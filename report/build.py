"""Build reports: from a session's events (labelled, every step) and from a TorchLens call tree (config-free).

`session_report` refuses events that carry extractor errors or errors raised inside instrumented calls, a stream
with a call missing, decode steps whose structure differs from the other decode steps, and a second generation.
"""

from __future__ import annotations

from typing import Any

from ..errors import MergeError
from ..events import lanes
from ..events.schema import CallEvent, SessionEnd
from ..events.table import NO_PARENT, EventTable, as_table
from ..merge import calltree
from ..merge.loops import Hints, Loop, LoopBuilder, check_exact, walk
from ..model_configs.config import ModelConfig
from .completeness import complete_part
from .moe import moe_table
from .positions import position_warnings
from .schema import Report
from .stages import stage_view


def hints_for(config: ModelConfig | None, container_sizes: dict[str, int] | None) -> Hints:
    sizes = dict(container_sizes or {})
    if config is None:
        return Hints(container_sizes=sizes)
    return Hints(select_roles=frozenset(t.role for t in config.targets if t.select),
                 axes={t.role: t.axis for t in config.targets if t.axis},
                 distinguish={t.role: t.distinguish for t in config.targets if t.distinguish},
                 container_sizes=sizes)


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
            loop.distinguish = keys


def structural_report(tree: Any, model: Any = None) -> Report:
    """Config-free mode: the exact loop nest of any model from its TorchLens call tree alone (with `model`, stack
    members that differ in constructor parameters are annotated)."""
    roots = calltree.from_trace(tree)
    loops = LoopBuilder(Hints(container_sizes={a: len(kids) for a, kids in tree.static_children.items()})).build(roots)
    counts = calltree.counts(roots)
    check_exact(loops, counts, "structural report")
    if model is not None:
        annotate_members(loops, model)
    return Report(model_class=tree.class_names.get("", "?"), config=None, source="torchlens", loops=loops,
                  counts=counts)


def _check_steps(loops: list[Loop], step_role: str | None) -> None:
    """Every decode step must have the structure of the others (MoE picks aside): one parfor variant."""
    for loop in loops:
        if loop.role != step_role or loop.kind != "parfor":
            continue
        decode = {i for i, lane in enumerate(loop.lanes[: loop.bound]) if lane.get(lanes.PHASE) == lanes.DECODE}
        holding = [v for v in loop.variants if decode & set(v.iterations)]
        if len(holding) > 1:
            first = sorted(decode & set(holding[0].iterations))
            odd = sorted(decode & set(holding[1].iterations))
            raise MergeError(f"decode steps {odd} have another call structure than decode steps {first} "
                             f"(compare the events of step {odd[0]} with step {first[0]})")


def _refuse_broken(table: EventTable) -> None:
    c = table.columns
    bad = {i for i, lane in enumerate(table.lanes) if lanes.EXTRACT_ERROR in lane}
    errors = [table.lanes[c["lane"][r]][lanes.EXTRACT_ERROR] for r in table.rows_where("lane", bad)]
    if errors:
        raise MergeError("metadata extraction failed, no report is made:\n  " + "\n  ".join(errors))
    raised = [f"{table.nodes[c['node'][r]].address}:{c['call_index'][r]} raised {name}"
              for r, name in sorted(table.errors.items(), key=lambda item: c["seq"][item[0]])]
    if raised:
        raise MergeError("the session raised inside instrumented calls:\n  " + "\n  ".join(raised))


def _role_nodes(table: EventTable, step_role: str | None) -> set[int]:
    return {i for i, n in enumerate(table.nodes) if n.role == step_role}


def _steps(table: EventTable, step_role: str | None) -> list[dict[str, Any]]:
    """The step target's lanes in order; refuses a new prefill after decode steps (a second generation)."""
    c = table.columns
    steps = [{lanes.STEP: c["step"][r], **{k: v for k, v in table.lanes[c["lane"][r]].items() if k != lanes.STEP}}
             for r in table.rows_where("node", _role_nodes(table, step_role))]
    decoded = [s[lanes.STEP] for s in steps if s.get(lanes.PHASE) == lanes.DECODE]
    again = [s[lanes.STEP] for s in steps
             if s.get(lanes.PHASE) == lanes.PREFILL and decoded and s[lanes.STEP] > decoded[0]]
    if again:
        raise MergeError(f"step {again[0]} is a new prefill after decode steps: the session holds more than one "
                         "generation. Instrument one generation per session.")
    return steps


def _notes(table: EventTable, step_role: str | None) -> list[str]:
    c, steps = table.columns, _role_nodes(table, step_role)
    top = [r for r in table.rows_where("parent", {NO_PARENT}) if c["node"][r] not in steps]
    early = {r for r in top if table.lanes[c["lane"][r]].get(lanes.BEFORE_FIRST_FORWARD)}
    notes = []
    for rows, what in ((early, "ran before the first forward of the session, counted in step 0"),
                       (set(top) - early, "ran outside any forward after the first one (not in the stage view)")):
        if rows:
            notes.append(f"{what}: {', '.join(sorted({table.nodes[c['node'][r]].address for r in rows}))}")
    return notes


def _loops(table: EventTable, hints: Hints) -> list[Loop]:
    """The loop nest of a session's calls; the call tree and its lanes cache are dropped when it returns."""
    tree = calltree.TableTree(table)
    return LoopBuilder(hints, tree.lanes).build(tree.roots())


def session_report(events: EventTable | list[CallEvent], config: ModelConfig | None, *, model_class: str,
                   end: SessionEnd | None, container_sizes: dict[str, int] | None = None,
                   allow_incomplete: bool = False) -> Report:
    """The labelled loop nest of a whole session from its events and end record; exactness is checked before
    returning. A session that did not end normally is refused unless `allow_incomplete` (report/completeness.py)."""
    step_role = config.step_target.role if config and config.step_target else None
    table, incomplete = complete_part(as_table(events), end, step_role, allow_incomplete)
    if not len(table):
        raise MergeError("the session recorded no call of an instrumented module: nothing to report (did the "
                         "session run the model?)")
    _refuse_broken(table)
    loops = _loops(table, hints_for(config, container_sizes))
    counts = calltree.table_counts(table)
    check_exact(loops, counts)
    _check_steps(loops, step_role)
    return Report(model_class=model_class, config=config.name if config else None, source="events",
                  loops=loops, counts=counts, steps=_steps(table, step_role), moe=moe_table(table),
                  notes=_notes(table, step_role), incomplete=incomplete,
                  warnings=position_warnings(table, config, step_role),
                  reads_values=list(config.reads_values) if config else [],
                  stage_view=stage_view(loops, config.stages if config else (), step_role))
