"""Profiler labels (`profile=True`): one `record_function` range per recorded call in a torch.profiler trace, named
by stage, role and step; `profile_table` sums them per stage and step without counting nested ranges twice."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from loopmeta.events.labels import PREFIX, parse
from loopmeta.patches import instrument
from loopmeta.traces.profile import profile_table


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(16, 16)

    def forward(self, x):
        return torch.relu(self.inner(x)) @ torch.ones(16, 16)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block() for _ in range(2))
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def net_config(tmp_path: Path) -> Path:
    (tmp_path / "net.py").write_text("def step(call):\n    return {'phase': 'prefill', 'rows': 8}\n")
    (tmp_path / "net.toml").write_text(
        'name = "net"\nroot_classes = ["Net"]\nadapter = "net"\nstages = ["blocks", "head"]\n'
        '[[targets]]\nrole = "step"\npattern = ""\nstep = true\non_enter = "step"\n'
        '[[targets]]\nrole = "block"\npattern = "blocks[%d]"\nstage = "blocks"\n'
        '[[targets]]\nrole = "inner"\npattern = "blocks[%d].inner"\nstage = "blocks"\n'
        '[[targets]]\nrole = "head"\npattern = "head"\nstage = "head"\n')
    return tmp_path / "net.toml"


def labels_of(trace: Path) -> list[dict]:
    return [e for e in json.loads(trace.read_text())["traceEvents"]
            if e.get("ph") == "X" and e.get("cat") == "user_annotation" and e["name"].startswith(PREFIX)]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """Three forwards of `Net`, labelled, under the CPU profiler: (recorder, exported trace, profiler)."""
    tmp_path = tmp_path_factory.mktemp("profiled")
    model, x = Net(), torch.ones(8, 16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with instrument(model, net_config(tmp_path), profile=True) as rec, torch.no_grad():
            for _ in range(3):
                model(x)
    prof.export_chrome_trace(str(tmp_path / "profile.json"))
    return rec, tmp_path / "profile.json", prof


def test_each_recorded_call_has_one_label(profiled):
    rec, trace, _ = profiled
    labels = labels_of(trace)
    assert len(labels) == len(rec.table) == 3 * 6
    assert Counter(parse(e["name"]) for e in labels) == Counter((e.stage or "-", e.role, e.step) for e in rec.events)
    names = {e["name"] for e in labels}
    assert "loopmeta/-/step[step=2,phase=prefill,rows=8]" in names
    assert "loopmeta/blocks/inner[step=1,layer=1]" in names  # the loop iteration: blocks.1.inner


def test_labels_are_off_by_default(tmp_path):
    model = Net()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with instrument(model, net_config(tmp_path)) as rec, torch.no_grad():
            model(torch.ones(8, 16))
    assert len(rec.table) == 6 and not any(e.name.startswith(PREFIX) for e in prof.events())


def test_the_table_sums_each_stages_outermost_labels(profiled):
    _, trace, prof = profiled
    labels = labels_of(trace)
    expected_calls: Counter = Counter()
    expected_us: dict[tuple[str, int], float] = {}
    for e in labels:  # independently: a label inside another of its stage on its thread adds no time
        stage, _, step = parse(e["name"])
        expected_calls[stage, step] += 1
        inside = any(o is not e and o["tid"] == e["tid"] and parse(o["name"])[0] == stage and o["ts"] <= e["ts"]
                     and e["ts"] + e["dur"] <= o["ts"] + o["dur"] for o in labels)
        expected_us[stage, step] = expected_us.get((stage, step), 0.0) + (0.0 if inside else e["dur"])
    rows = profile_table(trace)
    assert [(r.stage, r.step) for r in rows] == [(s, k) for k in range(3) for s in ("-", "blocks", "head")]
    for r in rows:
        assert r.calls == expected_calls[r.stage, r.step]
        assert r.total_us == pytest.approx(expected_us[r.stage, r.step], abs=1e-6)
    blocks = [r for r in rows if r.stage == "blocks"]
    assert all(r.calls == 4 for r in blocks)  # two blocks, each with its inner Linear: only the blocks count
    from_profiler = profile_table(prof)  # a finished profiler reads the same
    assert [(r.stage, r.step, r.calls) for r in from_profiler] == [(r.stage, r.step, r.calls) for r in rows]
    assert [r.total_us for r in from_profiler] == pytest.approx([r.total_us for r in rows], abs=0.01)


def test_a_label_that_cannot_open_never_breaks_the_forward(tmp_path, monkeypatch):
    import torch.profiler

    def broken(name):
        raise RuntimeError("no profiler here")

    model, x = Net(), torch.ones(8, 16)
    plain = model(x)
    monkeypatch.setattr(torch.profiler, "record_function", broken)
    with instrument(model, net_config(tmp_path), profile=True) as rec:
        assert torch.equal(model(x), plain) and torch.equal(model(x), plain)
        assert rec.current() is None  # the recorder's stack was left as it was
    assert len(rec.table) == 0 and any("no profiler here" in f for f in rec.faults)


def test_a_steps_later_reads_fall_inside_its_range(tmp_path, monkeypatch):
    """A lane value read when the step ends (`lanes.Later`, e.g. a GPU's router ids) is read while the step's
    profiler range is still open, so a trace puts its time in the step, not between steps."""
    import torch.profiler

    log: list[str] = []

    class Range:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            log.append("open " + self.name.split("/")[-1].split("[")[0])
            return self

        def __exit__(self, *exc):
            log.append("close " + self.name.split("/")[-1].split("[")[0])

    (tmp_path / "net.py").write_text(
        "from loopmeta.events.lanes import Later\n"
        "def step(call):\n    return {'phase': 'prefill'}\n"
        "def head_done(call, result):\n    log = call.state['options']['log']\n"
        "    return {'read': Later(lambda: log.append('read') or 7)}\n")
    (tmp_path / "net.toml").write_text(
        'name = "net"\nroot_classes = ["Net"]\nadapter = "net"\n'
        '[[targets]]\nrole = "step"\npattern = ""\nstep = true\non_enter = "step"\n'
        '[[targets]]\nrole = "head"\npattern = "head"\non_exit = "head_done"\n')
    monkeypatch.setattr(torch.profiler, "record_function", Range)
    model = Net()
    with instrument(model, tmp_path / "net.toml", profile=True, options={"log": log}) as rec:
        model(torch.ones(8, 16))
    assert log == ["open step", "open head", "close head", "read", "close step"]
    assert [e.lane.get("read") for e in rec.events if e.role == "head"] == [7]
