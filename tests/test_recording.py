"""The recording path: the events file is written step by step (what a kill -9 can lose), version 3 is still read,
lanes are interned exactly, and classes shared with unrecorded modules are left alone."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import as_version3, as_version4
from loopmeta.errors import EventFileError
from loopmeta.events import read_events
from loopmeta.events.schema import CallEvent
from loopmeta.events.table import NO_PARENT, EventTable, NodeInfo, lane_key
from loopmeta.patches import instrument
from stubs.deepseek_ocr_v1 import MODES


class Toy(torch.nn.Module):
    """`a` is recorded; `b` and `c` are Linear too, but no target names them."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(4, 4) for _ in range(3))

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def toy_config(tmp_path: Path) -> Path:
    (tmp_path / "toy.py").write_text("def step(call):\n    return {'phase': 'prefill'}\n")
    (tmp_path / "toy.toml").write_text('name = "toy"\nroot_classes = ["Toy"]\nadapter = "toy"\n'
                                       '[[targets]]\nrole = "step"\npattern = ""\nstep = true\non_enter = "step"\n'
                                       '[[targets]]\nrole = "a"\npattern = "a"\n')
    return tmp_path / "toy.toml"


@pytest.fixture(scope="module")
def inputs(v1_model):
    kw = v1_model.prepare_infer_inputs(image_size=(1000, 800), **MODES["base"])
    kw.pop("plan")
    return kw


def test_each_finished_step_is_in_the_file_before_the_next_starts(v1_model, inputs, tmp_path):
    """Independent view: a pre-hook on the root reads the file as each step starts; forward hooks count the calls
    of every recorded module that finished before it."""
    path = tmp_path / "events.jsonl"
    finished: Counter[str] = Counter()
    seen_at_start = []
    recorded = {"", "lm_head", "model.sam_model"}
    hooks = [m.register_forward_hook(lambda mod, a, out, name=name: finished.update([name]))
             for name, m in v1_model.named_modules() if name in recorded]

    def at_step_start(module, args):
        stream = read_events(path)
        assert stream.end is None  # still running: the file is cut here
        calls = Counter(e.address for e in stream.table.events())
        seen_at_start.append({a: (calls[a], finished[a]) for a in recorded})

    hooks.append(v1_model.register_forward_pre_hook(at_step_start))
    try:
        with instrument(v1_model, "deepseek_ocr_v1", events=path, check_versions=False), torch.no_grad():
            v1_model.generate(**inputs, max_new_tokens=3)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen_at_start) == 3
    for step, counts in enumerate(seen_at_start):
        assert all(in_file == done for in_file, done in counts.values()), (step, counts)
    assert [c[""][0] for c in seen_at_start] == [0, 1, 2]


def test_a_line_cut_by_a_kill_ends_the_stream(v1_model, inputs, tmp_path):
    path = tmp_path / "events.jsonl"
    with instrument(v1_model, "deepseek_ocr_v1", events=path, check_versions=False), torch.no_grad():
        v1_model.generate(**inputs, max_new_tokens=2)
    whole = read_events(path)
    lines = path.read_text().splitlines(keepends=True)
    last_calls = max(i for i, line in enumerate(lines) if '"kind":"calls"' in line)
    path.write_text("".join(lines[:last_calls]) + lines[last_calls][: len(lines[last_calls]) // 2])
    cut = read_events(path)  # the half-written last line is what a kill leaves: the stream was cut there
    assert cut.end is None and 0 < len(cut.table) < len(whole.table)
    path.write_text("".join(lines[:last_calls]) + lines[last_calls][:20] + "\n" + "".join(lines[last_calls + 1:]))
    with pytest.raises(EventFileError, match="not JSON"):  # a broken line inside the file is damage, not a cut
        read_events(path)


def test_version_3_files_are_still_read(v1_sessions, tmp_path):
    s = v1_sessions["gundam_2x3"]
    path = tmp_path / "events.jsonl"
    path.write_bytes(Path(s["path"]).read_bytes())
    assert read_events(path).header.version == 5
    as_version3(path)
    old = read_events(path)
    assert old.header.version == 3 and '"kind":"call"' in path.read_text().splitlines()[1]
    assert old.events == s["recorder"].events and old.end == s["recorder"].end


def test_version_4_files_are_still_read(v1_sessions, tmp_path):
    """Version 4 (no threads, no call times) reads as before: the same events, an untimed table."""
    s = v1_sessions["gundam_2x3"]
    path = tmp_path / "events.jsonl"
    path.write_bytes(Path(s["path"]).read_bytes())
    as_version4(path)
    old = read_events(path)
    assert old.header.version == 4 and old.header.time_origin_ns is None and not old.table.timed
    assert len(json.loads(path.read_text().splitlines()[-2])["rows"][0]) == 10
    assert old.events == s["recorder"].events and old.end == s["recorder"].end


def test_lanes_equal_as_json_share_an_id_and_only_those():
    keys = [lane_key(lane) for lane in ({"a": 1}, {"a": True}, {"a": 1.0}, {"a": "1"}, {"a": [1]}, {"a": [True]},
                                        {"a": {"b": 1}}, {"b": 1}, {"a": 0.0}, {"a": -0.0}, {"a": [0.0]},
                                        {"a": [-0.0]})]
    assert len(set(keys)) == len(keys)
    assert [json.dumps(lane) for lane in ({"a": 0.0}, {"a": -0.0})] == ['{"a": 0.0}', '{"a": -0.0}']  # JSON differs
    assert lane_key({"a": 1, "b": [2]}) == lane_key({"a": 1, "b": [2]})


def test_an_events_lane_is_a_copy_all_the_way_down():
    table = EventTable("s")
    table.add_lane({"hit": [1, 2], "ledger": {"k": [3]}})
    table.nodes.append(NodeInfo("a", "A", "r", "st"))
    table.tensors.append(())
    table.extend([(0, 0, 0, 0, 1, NO_PARENT, 0, 0, 0)])
    lane = table.event(0).lane
    lane["hit"].append(9)
    lane["ledger"]["k"].append(9)
    assert table.event(0).lane == {"hit": [1, 2], "ledger": {"k": [3]}}


def test_events_whose_lane_is_not_plain_json_are_refused_naming_the_call():
    import dataclasses

    import numpy as np

    event = CallEvent(session="s", seq=0, step=0, phase="prefill", address="a", class_name="A", call_index=1,
                      parent=None, role="r", stage=None, lane={"n": [1, 2]}, inputs=(), outputs=())
    assert EventTable.from_events([event]).event(0).lane == {"n": [1, 2]}
    with pytest.raises(EventFileError, match="call a:1: its lane is not plain JSON"):
        EventTable.from_events([dataclasses.replace(event, lane={"n": np.int64(3)})])


def test_a_class_shared_with_unrecorded_modules_is_left_alone(tmp_path):
    model, x = Toy(), torch.ones(2, 4)
    original = vars(torch.nn.Linear)["forward"]
    calls = []
    model.a.register_forward_pre_hook(lambda mod, args: calls.append(mod))
    plain = model(x)
    with instrument(model, toy_config(tmp_path)) as rec:
        assert vars(torch.nn.Linear)["forward"] is original  # b, c and every other Linear pay nothing
        assert "forward" in vars(model.a) and "forward" not in vars(model.b)
        assert torch.equal(model(x), plain)
        model(x)
    assert "forward" not in vars(model.a) and vars(torch.nn.Linear)["forward"] is original
    assert [e.address for e in rec.events].count("a") == len(calls) - 1 == 2


def test_a_lane_is_kept_as_returned_even_if_the_extractor_changes_it_later(tmp_path):
    (tmp_path / "toy.py").write_text("SEEN = []\n\n\ndef step(call):\n    SEEN.append(len(SEEN))\n"
                                     "    return {'phase': 'prefill', 'seen': SEEN}\n")
    (tmp_path / "toy.toml").write_text('name = "toy"\nroot_classes = ["Toy"]\nadapter = "toy"\n'
                                       '[[targets]]\nrole = "step"\npattern = ""\nstep = true\non_enter = "step"\n')
    model = Toy()
    with instrument(model, tmp_path / "toy.toml", events=tmp_path / "e.jsonl") as rec:
        for _ in range(3):
            model(torch.ones(1, 4))
    assert [e.lane["seen"] for e in rec.events] == [[0], [0, 1], [0, 1, 2]]
    assert [e.lane["seen"] for e in read_events(tmp_path / "e.jsonl").events] == [[0], [0, 1], [0, 1, 2]]


def test_an_instrumented_module_refuses_to_be_copied_during_its_session(tmp_path):
    import copy

    from loopmeta.errors import InstrumentationError

    model = Toy()
    with instrument(model, toy_config(tmp_path)):
        with pytest.raises(InstrumentationError, match="copy the model before instrumenting it"):
            copy.deepcopy(model)
    assert torch.equal(copy.deepcopy(model)(torch.ones(1, 4)), model(torch.ones(1, 4)))


def test_a_seq_far_beyond_the_stream_is_a_missing_call_not_a_huge_allocation(v1_sessions):
    from loopmeta.errors import MergeError
    from loopmeta.events.table import EventTable
    from loopmeta.model_configs import load_config
    from loopmeta.report.build import session_report

    s = v1_sessions["base"]
    table = EventTable.from_events(s["recorder"].events)
    last = max(range(len(table)), key=table.columns["seq"].__getitem__)
    table.columns["seq"][last] = 2**40
    with pytest.raises(MergeError, match=r"event seq \d+ is missing \(next is .* with seq 1099511627776\)"):
        session_report(table, load_config("deepseek_ocr_v1"), model_class="m", end=s["recorder"].end,
                       container_sizes=s["recorder"].header.container_sizes)


def test_later_values_are_read_when_the_step_ends(tmp_path):
    """A `Later` lane value is read after every call of the step returned (here: after the step's own on_exit, which
    runs after `a`'s), recorded as read, in memory and in the file; a read that raises marks that call's lane, and
    the run goes on."""
    (tmp_path / "toy.py").write_text(
        "from loopmeta.events.lanes import Later\nSEEN = []\n\n"
        "def step(call):\n    return {'phase': 'prefill'}\n\n"
        "def step_done(call, result):\n    SEEN.append('step')\n    return {}\n\n"
        "def a_done(call, result):\n    SEEN.append('a')\n"
        "    return {'seen': Later(lambda: len(SEEN)), 'bad': Later(lambda: 1 / 0) if len(SEEN) == 3 else 0}\n")
    (tmp_path / "toy.toml").write_text('name = "toy"\nroot_classes = ["Toy"]\nadapter = "toy"\n'
                                       '[[targets]]\nrole = "step"\npattern = ""\nstep = true\non_enter = "step"\n'
                                       'on_exit = "step_done"\n[[targets]]\nrole = "a"\npattern = "a"\n'
                                       'on_exit = "a_done"\n')
    model = Toy()
    with instrument(model, tmp_path / "toy.toml", events=tmp_path / "e.jsonl") as rec:
        for _ in range(3):
            model(torch.ones(1, 4))
    a = [e.lane for e in rec.events if e.address == "a"]
    assert [lane["seen"] for lane in a] == [2, 4, 6]  # read at once, they would be 1, 3, 5
    assert "bad" not in a[1] and "ZeroDivisionError" in a[1]["extract_error"] and a[0]["bad"] == a[2]["bad"] == 0
    assert [e.lane for e in read_events(tmp_path / "e.jsonl").events] == [e.lane for e in rec.events]
