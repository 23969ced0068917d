"""`report.svg`: the loop nest drawn with graphviz (docs/report-format.md#the-drawing-reportsvg).

Every `for`, `parfor` and `select` is a box (a graphviz cluster, nested as the loops nest) labelled with its one-line
form (`report.notation.short`) and a short lane summary; inside it, the repeated node (`model.layers[i]`) and, under
that node, the loop's body. Calls are nodes, joined to the calls and loops they make by arrows; parfors whose
calls alternate share a dotted box naming their rounds. Fill colours are the
stages (one fixed palette, given out in sorted stage order; a legend names them). When the session has prefill and
decode steps, each top-level loop says in which step groups it runs (from the report's stage view), and the loop
over steps names its groups.

Invariant: the same report gives the same DOT text (node names follow the loops' positions; nothing depends on
time or hashing). The `graphviz` package is imported only when drawing, and rendering needs the `dot` program:
`svg_missing_reason()` says when it cannot be done here.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from typing import Any

from ..errors import ReportFileError
from ..events.lanes import BEFORE_FIRST_FORWARD, DECODE, PREFILL, STEP
from ..merge.loops import Loop, substitute, walk
from ..report.notation import (Subs, fmt_lane, grouped, groups_text, is_step_loop, member_subs, name, ranges,
                               rounds_line, short, varying)
from ..report.schema import Report

PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#d9d9d9",
           "#bc80bd", "#ccebc5", "#ffed6f")  # ColorBrewer Set3; more stages than colours reuse them in order
BOX_TINT = "40"  # alpha of a box's fill: nested boxes of one stage read darker
LANES_SHOWN = 4  # distinct lanes listed under a parfor


@dataclass
class Canvas:
    """What every box reads while the graph is drawn. Edges wait in `edges` and are added last, at the top level:
    an edge stated inside a cluster would pull its nodes into it."""

    colours: dict[str, str]  # stage -> fill
    groups: list[tuple[str, list[int]]]  # (phase, steps) per step group; [] unless prefill and decode both ran
    step_loop: Loop | None  # the top-level loop whose iterations are the session's steps
    edges: list[tuple[str, str, str | None]] = field(default_factory=list)  # tail, head, head's cluster

    def fill(self, stage: str | None) -> str:
        return self.colours.get(stage or "", "white")


def svg_missing_reason() -> str | None:
    """Why `report.svg` cannot be drawn here, or None when it can."""
    if shutil.which("dot") is None:
        return ("report.svg not written: the `dot` program was not found; install graphviz (apt-get install graphviz, "
                "or brew install graphviz)")
    if importlib.util.find_spec("graphviz") is None:
        return "report.svg not written: the graphviz Python package is missing (pip install graphviz)"
    return None


def to_svg(report: Report) -> str:
    """The drawing as SVG text, rendered by the `dot` program (check `svg_missing_reason()` first)."""
    import graphviz

    try:
        return graphviz.pipe_string("dot", "svg", to_dot(report), encoding="utf-8")
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError) as exc:
        raise ReportFileError(f"cannot draw report.svg with graphviz's dot: {exc}") from None


def to_dot(report: Report) -> str:
    """The drawing as DOT source: one box per for / parfor / select, one node per call, a legend of stages."""
    import graphviz

    stages = sorted({loop.stage for loop in walk(report.loops) if loop.stage})
    canvas = Canvas({s: PALETTE[i % len(PALETTE)] for i, s in enumerate(stages)}, step_groups(report),
                    next((loop for loop in report.loops if is_step_loop(loop)), None))
    graph = graphviz.Digraph("loops", graph_attr={
        "rankdir": "LR", "compound": "true", "fontname": "Helvetica", "fontsize": "11",
        "nodesep": "0.15", "ranksep": "0.3", "labelloc": "t",
        "label": text([f"loop nest of {report.model_class} ({report.config or 'config-free'}), from {report.source}"])},
        node_attr={"shape": "box", "style": "filled", "fontname": "Helvetica", "fontsize": "10"},
        edge_attr={"color": "#777777", "arrowsize": "0.5"})
    siblings(canvas, graph, report.loops, "t", (), None)
    for tail, head, cluster in canvas.edges:
        graph.edge(tail, head, **({"lhead": cluster} if cluster else {}))
    if stages:
        with graph.subgraph(name="cluster_legend") as legend:
            legend.attr(label="stages", style="solid", color="#777777")
            for i, stage in enumerate(stages):
                legend.node(f"legend_{i}", text([stage]), fillcolor=canvas.colours[stage])
    return graph.source


def text(lines: list[str]) -> Any:
    """A label: the lines, centred, taken literally (backslashes kept, `<...>` never read as an HTML label)."""
    import graphviz

    return graphviz.nohtml("\\n".join(line.replace("\\", "\\\\") for line in lines if line))


def last_first(items: list[Any]) -> list[tuple[int, Any]]:
    """Items with their positions, last first: with rankdir=LR, dot stacks the nodes of a rank from the bottom up in
    the order it meets them, so siblings are added last-first to read top-down in running order (mostly: dot may
    still swap two to uncross arrows)."""
    return list(enumerate(items))[::-1]


def draw(canvas: Canvas, graph: Any, loop: Loop, key: str, subs: Subs, extra: list[str]) -> tuple[str, str | None]:
    """Draw `loop` into `graph`: a call as a node; a loop as a box holding its repeated node, whose body hangs off
    it. Returns the head node and the box (None for a call), which the parent's arrow points to."""
    head = f"n{key}"
    if loop.kind == "call":
        graph.node(head, text([short(loop, subs), *extra]), fillcolor=canvas.fill(loop.stage))
        bodies(canvas, graph, loop, key, subs, head)
        return head, None
    cluster, inner = f"cluster_{key}", member_subs(loop, subs)
    colour = canvas.colours.get(loop.stage or "")
    with graph.subgraph(name=cluster) as box:
        box.attr(label=text([short(loop, subs), *summary(loop, canvas), *extra]), color="#555555",
                 **({"style": "filled", "fillcolor": colour + BOX_TINT} if colour else {"style": "solid"}))
        member = substitute(loop.address, inner)
        box.node(head, text([name(member, loop.class_name), f"({loop.class_name})" if member else ""]),
                 fillcolor=canvas.fill(loop.stage))
        bodies(canvas, box, loop, key, inner, head)
    return head, cluster


def bodies(canvas: Canvas, graph: Any, loop: Loop, key: str, subs: Subs, head: str) -> None:
    """The loop's body under `head`; when iterations differ, each body in a dashed box naming its iterations."""
    if len(loop.variants) == 1:
        body(canvas, graph, loop.variants[0].body, f"{key}_0", subs, head)
        return
    for k, variant in last_first(loop.variants):
        its = variant.iterations
        label = (groups_text(canvas.groups, set(its)) if loop is canvas.step_loop and canvas.groups
                 else f"iterations [{ranges(its)}]")
        with graph.subgraph(name=f"cluster_{key}_v{k}") as box:
            box.attr(label=text([label]), style="dashed", color="#555555")
            if not variant.body:  # an empty cluster is not drawn: say what is empty
                box.node(f"n{key}_v{k}", "(no calls)", shape="plaintext", style="solid")
                canvas.edges.append((head, f"n{key}_v{k}", None))
            body(canvas, box, variant.body, f"{key}_{k}", subs, head)


def body(canvas: Canvas, graph: Any, loops: list[Loop], key: str, subs: Subs, head: str) -> None:
    """Each loop of one body, with an arrow from `head` to it (to its box, for a loop)."""
    siblings(canvas, graph, loops, key, subs, head)


def siblings(canvas: Canvas, graph: Any, loops: list[Loop], key: str, subs: Subs, head: str | None) -> None:
    """Sibling loops, each with an arrow from `head` (None at the top level, where each says its step groups);
    parfors that alternate in rounds (`Loop.rounds`) share a dotted box naming the rounds."""
    for j, item in last_first(grouped(loops)):
        if not isinstance(item, list):
            _child(canvas, graph, item, f"{key}_{j}", subs, head)
            continue
        with graph.subgraph(name=f"cluster_{key}_{j}_rounds") as box:
            box.attr(label=text([rounds_line(item, subs)]), style="dotted", color="#555555")
            for m, loop in last_first(item):
                _child(canvas, box, loop, f"{key}_{j}_{m}", subs, head)


def _child(canvas: Canvas, graph: Any, loop: Loop, key: str, subs: Subs, head: str | None) -> None:
    child_head, cluster = draw(canvas, graph, loop, key, subs, top_lines(loop, canvas) if head is None else [])
    if head is not None:
        canvas.edges.append((head, child_head, cluster))


def summary(loop: Loop, canvas: Canvas) -> list[str]:
    """A box's lines under its `short()` line: the axis, then what its iterations differ in (a parfor's distinct
    lanes, a for's class and `varying()` members, a select's calls and ids picked, the step loop's groups)."""
    axis = f"axis={loop.axis}" if loop.axis else ""
    if loop.kind == "for":
        return [f"{axis} ({loop.class_name})".strip(), varying(loop)]
    if loop.kind == "select":
        return [axis, f"{len(loop.picks)} calls; ids ever picked [{ranges(loop.members)}]"]
    if loop is canvas.step_loop:
        groups = canvas.groups or [("", list(range(loop.bound)))]
        return [axis, "steps run in sequence: " + groups_text(groups, set(range(loop.bound)))]
    lanes = [lane for lane in dict.fromkeys(fmt_lane(lane) for lane in loop.lanes[: loop.bound]) if lane]
    return [axis, *lanes[:LANES_SHOWN], "..." if len(lanes) > LANES_SHOWN else ""]


def top_lines(loop: Loop, canvas: Canvas) -> list[str]:
    """A top-level loop's extra lines: the step groups it runs in, and whether it ran before the first forward."""
    lines = ["runs in: " + groups_text(canvas.groups, {lane.get(STEP) for lane in loop.lanes})] if canvas.groups else []
    if loop.lanes and all(lane.get(BEFORE_FIRST_FORWARD) for lane in loop.lanes):
        lines.append("(before the first forward, counted in step 0)")
    return lines


def step_groups(report: Report) -> list[tuple[str, list[int]]]:
    """The session's step groups as (phase, steps): the stage view's, else one per phase; [] unless the session has
    both prefill and decode steps."""
    phases: dict[str, list[int]] = {}
    for step in report.steps:
        phases.setdefault(step.get("phase", "?"), []).append(step["step"])
    if not {PREFILL, DECODE} <= set(phases):
        return []
    return [(g["phase"], g["steps"]) for g in report.stage_view] or list(phases.items())
