"""report.svg, read back as SVG: every for / parfor / select of the report is a box showing its bound, boxes nest as
the loops nest, the legend gives every stage its colour, and the step groups are named. The expectations come from
the report's JSON, walked here, not from the drawing code."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from loopmeta.run_traced import main

SVG = "{http://www.w3.org/2000/svg}"
LOOP_LINE = re.compile(r" (for|parfor|select) (?:\d+\.\.)?(\d+)(?: of (\d+))?$")  # a box's first line: `short()`


def needs_dot() -> None:
    if shutil.which("dot") is None:
        pytest.skip("graphviz's dot program is not installed (apt-get install graphviz; CI installs it)")


@pytest.fixture(scope="module")
def drawn(v1_sessions, tmp_path_factory):
    """The report (JSON) and its drawing (parsed SVG) of the v1 stub's gundam session: prefill + 2 decode steps."""
    needs_dot()
    out = tmp_path_factory.mktemp("svg")
    assert main(["--from-events", str(v1_sessions["gundam_2x3"]["path"]), "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text()), ET.parse(out / "report.svg").getroot(), out


def box(g: ET.Element) -> tuple[float, float, float, float]:
    """The bounding box of a drawn cluster or node (its polygon)."""
    shape = g.find(f"{SVG}polygon")
    xy = [tuple(map(float, p.split(","))) for p in shape.get("points").split()]
    return min(x for x, _ in xy), min(y for _, y in xy), max(x for x, _ in xy), max(y for _, y in xy)


def inside(a: tuple, b: tuple) -> bool:
    return a != b and b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]


def texts(g: ET.Element) -> list[str]:
    return [t.text or "" for t in g.findall(f"{SVG}text")]


def groups(svg: ET.Element, kind: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if g.get("class") == kind]


def loop_key(loop: dict) -> str:
    size = loop["container_size"] if loop["kind"] == "select" else None
    return f"{loop['kind']} {loop['bound']}" + (f" of {size}" if size is not None else "")


def json_nest(loops: list[dict]) -> tuple:
    """The report's for / parfor / select nest (calls are see-through), as sorted nested (key, children) pairs."""
    out = []
    for loop in loops:
        kids = json_nest([b for v in loop["variants"] for b in v["body"]])
        out.extend([(loop_key(loop), kids)] if loop["kind"] != "call" else kids)
    return tuple(sorted(out))


def walk(loops: list[dict]):
    for loop in loops:
        yield loop
        for v in loop["variants"]:
            yield from walk(v["body"])


def loop_boxes(svg: ET.Element) -> dict[str, tuple[str, tuple, str]]:
    """The drawn boxes whose first line is a loop's: cluster title -> (key, bounding box, first line)."""
    out = {}
    for g in groups(svg, "cluster"):
        lines = texts(g)
        m = LOOP_LINE.search(lines[0]) if lines else None
        if m:
            key = f"{m[1]} {m[2]}" + (f" of {m[3]}" if m[3] else "")
            out[g.find(f"{SVG}title").text] = (key, box(g), lines[0])
    return out


def test_every_loop_is_a_box_with_its_bound(drawn):
    report, svg, _ = drawn
    loops = [loop for loop in walk(report["loops"]) if loop["kind"] != "call"]
    assert {loop["kind"] for loop in loops} == {"for", "parfor", "select"}
    assert Counter(key for key, _, _ in loop_boxes(svg).values()) == Counter(loop_key(loop) for loop in loops)
    for loop in loops:  # its box names what it iterates: the parfor's node, the container of a for / select
        tail = (loop["address"] if loop["kind"] == "parfor" else loop["container"]).rpartition(".")[2]
        assert any(key == loop_key(loop) and tail in line for key, _, line in loop_boxes(svg).values()), loop


def test_boxes_nest_as_the_loops_nest(drawn):
    report, svg, _ = drawn
    boxes = loop_boxes(svg)

    def parent(title: str) -> str | None:
        """The smallest loop box around this one."""
        around = [t for t, (_, b, _) in boxes.items() if inside(boxes[title][1], b)]
        return min(around, key=lambda t: (boxes[t][1][2] - boxes[t][1][0]) * (boxes[t][1][3] - boxes[t][1][1]),
                   default=None)

    parents = {title: parent(title) for title in boxes}

    def svg_nest(under: str | None) -> tuple:
        return tuple(sorted((boxes[t][0], svg_nest(t)) for t, p in parents.items() if p == under))

    assert svg_nest(None) == json_nest(report["loops"])
    assert any(p is not None for p in parents.values())  # the session's nest is deeper than one level


def test_the_legend_gives_every_stage_its_colour(drawn):
    report, svg, _ = drawn
    stages = {loop["stage"] for loop in walk(report["loops"]) if loop["stage"]}
    (legend,) = [g for g in groups(svg, "cluster") if texts(g) == ["stages"]]
    nodes = groups(svg, "node")
    keys = [n for n in nodes if inside(box(n), box(legend))]
    fills = {texts(n)[0]: n.find(f"{SVG}polygon").get("fill") for n in keys}
    assert set(fills) == stages and len(set(fills.values())) == len(stages)
    used = {n.find(f"{SVG}polygon").get("fill") for n in nodes if n not in keys}
    assert set(fills.values()) <= used  # each stage's colour fills the nodes of that stage


def test_the_step_groups_are_named(drawn):
    report, svg, _ = drawn
    phases = {s["step"]: s["phase"] for s in report["steps"]}
    decode = [s for s, p in phases.items() if p == "decode"]
    assert phases[0] == "prefill" and decode == list(range(1, len(phases)))
    every = [line for g in groups(svg, "cluster") + groups(svg, "node") for line in texts(g)]
    named = f"prefill step 0, decode steps {decode[0]}..{decode[-1]}"
    assert f"runs in: {named}" in every and f"steps run in sequence: {named}" in every


def test_the_drawing_is_deterministic(drawn, v1_sessions, tmp_path):
    _, _, out = drawn
    assert main(["--from-events", str(v1_sessions["gundam_2x3"]["path"]), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.svg").read_bytes() == (out / "report.svg").read_bytes()


def test_without_dot_the_run_says_why(v1_sessions, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no dot program on it
    code, err = cli("--from-events", v1_sessions["base"]["path"], "--out", tmp_path / "out")
    assert code == 0 and not (tmp_path / "out" / "report.svg").exists()
    assert "note: report.svg not written" in err and "apt-get install graphviz" in err


def test_no_svg_turns_the_drawing_off(v1_sessions, tmp_path, cli):
    needs_dot()
    code, err = cli("--from-events", v1_sessions["base"]["path"], "--out", tmp_path, "--no-svg")
    assert code == 0 and not (tmp_path / "report.svg").exists() and "note:" not in err
