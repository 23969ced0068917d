"""`lanes.Later` values read at the step's end, under the ways a session can go: steps on two threads, a step
target that is not the root, reads that return non-JSON or raise, extractors that change what they returned.
Every case keeps the events file whole and equal to memory, and never raises into the host."""
from __future__ import annotations

import threading
import warnings

import pytest
import torch

from loopmeta.events import read_events
from loopmeta.patches import instrument, recorder as recorder_module

TOML = ('name = "toy"\nroot_classes = ["Toy"]\nadapter = "toy"\n'
        '[[targets]]\nrole = "step"\npattern = "{step}"\nstep = true\non_enter = "step"\n'
        '[[targets]]\nrole = "a"\npattern = "{a}"\non_exit = "a_done"\n{extra}')


def whole(rec, path):
    """The file holds what memory holds, and no call was left unread or faulted."""
    assert rec.write_failed is None and rec.faults == [], (rec.write_failed, rec.faults)
    assert [e.lane for e in read_events(path).events] == [e.lane for e in rec.events]
    return [e.lane for e in rec.events if e.role == "a"]


def config(tmp_path, a_done_body, step="", a="a", extra=""):
    (tmp_path / "toy.py").write_text(
        "from loopmeta.events.lanes import Later\n\n"
        "def step(call):\n    return {'phase': 'prefill'}\n\n"
        f"def a_done(call, result):\n{a_done_body}\n")
    (tmp_path / "toy.toml").write_text(TOML.format(step=step, a=a, extra=extra))
    return tmp_path / "toy.toml"


class Toy(torch.nn.Module):
    def __init__(self, hook=None):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.hook = hook

    def forward(self, x):
        y = self.a(x)
        if self.hook:
            self.hook()
        return y


def test_a_step_ending_on_another_thread_writes_rows_read(tmp_path):
    """Thread A is mid-step (its `a` finished, its lane waiting for a read); thread B runs a whole step: the file
    gets A's row with its value read, not a placeholder."""
    cfg = config(tmp_path, "    return {'v': Later(lambda: 1)}")
    a_mid, b_done = threading.Event(), threading.Event()

    def hook():
        if threading.current_thread().name == "A":
            a_mid.set()
            b_done.wait(10)

    model = Toy(hook)
    with warnings.catch_warnings(record=True), instrument(model, cfg, events=tmp_path / "e.jsonl") as rec:
        ta = threading.Thread(target=model, args=(torch.ones(1, 4),), name="A")
        ta.start()
        a_mid.wait(10)
        model(torch.ones(1, 4))  # thread B (main)
        b_done.set()
        ta.join()
    assert whole(rec, tmp_path / "e.jsonl") == [{"v": 1}, {"v": 1}]


def test_several_steps_inside_one_outer_call(tmp_path):
    """The step target is not the root (a config may say so); one outer call runs two steps: the second step's
    start writes the first's rows with their values read."""
    cfg = config(tmp_path, "    return {'v': Later(lambda: 1)}", step="inner", a="inner.a",
                 extra='[[targets]]\nrole = "outer"\npattern = ""\n')

    class Toy(torch.nn.Module):  # noqa: F811 - the root class the config names
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(self.inner(x))

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)

    model = Toy()
    with warnings.catch_warnings(record=True), instrument(model, cfg, events=tmp_path / "e.jsonl") as rec:
        model(torch.ones(1, 4))
    assert whole(rec, tmp_path / "e.jsonl") == [{"v": 1}, {"v": 1}]


def test_an_interrupted_read_at_a_step_start_spends_no_call_index(tmp_path):
    """Steps inside one outer call: the second step's start reads the first's values and the read is interrupted
    (KeyboardInterrupt reaches the host, which runs the model again): the step that did not start takes no call
    index, so the recorded indices of the step target still count 1, 2, 3, ..."""
    cfg = config(tmp_path, "    return {'v': Later(_read)}\n\nN = []\n\ndef _read():\n    N.append(1)\n"
                           "    if len(N) == 1:\n        raise KeyboardInterrupt\n    return 1",
                 step="inner", a="inner.a", extra='[[targets]]\nrole = "outer"\npattern = ""\n')

    class Toy(torch.nn.Module):  # noqa: F811 - the root class the config names
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Sequential()
            self.inner.a = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.inner(self.inner(x))

    model = Toy()
    with warnings.catch_warnings(record=True), instrument(model, cfg, events=tmp_path / "e.jsonl") as rec:
        with pytest.raises(KeyboardInterrupt):
            model(torch.ones(1, 4))
        model(torch.ones(1, 4))
    steps = [e.call_index for e in sorted(rec.events, key=lambda e: e.seq) if e.role == "step"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 3
    assert [e.lane for e in read_events(tmp_path / "e.jsonl").events] == [e.lane for e in rec.events]


def test_a_read_returning_a_circular_value_marks_the_lane(tmp_path):
    """A read that returns non-JSON (a circular list) marks the lane, like an extractor's; the host's `with` block
    never sees it and the file stays whole."""
    cfg = config(tmp_path, "    l = []\n    l.append(l)\n    return {'v': Later(lambda: l)}")
    model = Toy()
    raised = None
    try:
        with warnings.catch_warnings(record=True), instrument(model, cfg, events=tmp_path / "e.jsonl") as rec:
            model(torch.ones(1, 4))
            model(torch.ones(1, 4))
    except BaseException as exc:  # noqa: BLE001
        raised = exc
    assert raised is None, f"the host's with-block raised {raised!r}"
    lanes = whole(rec, tmp_path / "e.jsonl")
    assert len(lanes) == 2 and all("v" not in lane and "not a dict of plain JSON" in lane["extract_error"]
                                   for lane in lanes)


def test_a_row_queued_after_another_threads_step_end_is_read_later(tmp_path, monkeypatch):
    """Thread A has its waiting lane but has not queued its row when thread B's step ends and reads what is
    queued: A's row is read later (at A's step end), never reaches the table or the file unread."""
    cfg = config(tmp_path, "    return {'v': Later(lambda: 1)}")
    a_in_window, b_done = threading.Event(), threading.Event()
    real = recorder_module.result_metas

    def result_metas(value):
        if threading.current_thread().name == "A" and not a_in_window.is_set():
            a_in_window.set()
            b_done.wait(10)
        return real(value)

    monkeypatch.setattr(recorder_module, "result_metas", result_metas)
    model = Toy()
    problems = []
    try:
        with warnings.catch_warnings(record=True), instrument(model, cfg, events=tmp_path / "e.jsonl") as rec:
            ta = threading.Thread(target=model, args=(torch.ones(1, 4),), name="A")
            ta.start()
            a_in_window.wait(10)
            model(torch.ones(1, 4))  # B: a full step; its root exit reads what is queued
            b_done.set()
            ta.join()
            try:
                rec.table
            except Exception as exc:  # noqa: BLE001
                problems.append(f"rec.table raised {exc!r}")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"with-block raised {exc!r}")
    cols = {n: len(c) for n, c in rec.table.columns.items()}
    if len(set(cols.values())) != 1:
        problems.append(f"table columns of different lengths: {cols}")
    assert not problems, problems
    assert whole(rec, tmp_path / "e.jsonl") == [{"v": 1}, {"v": 1}]


def test_a_waiting_lane_keeps_its_other_values_as_returned(tmp_path):
    """The other values of a lane holding a Later are copied when the call returns: a later extractor of the step
    that changes what `a_done` returned does not change `a`'s recorded lane."""
    (tmp_path / "toy.py").write_text(
        "from loopmeta.events.lanes import Later\nSEEN = []\n\n"
        "def step(call):\n    return {'phase': 'prefill'}\n\n"
        "def step_done(call, result):\n    SEEN.append('step')\n    return {}\n\n"
        "def a_done(call, result):\n    SEEN.append('a')\n    return {'v': Later(lambda: 0), 'seen': SEEN}\n")
    (tmp_path / "toy.toml").write_text('name = "toy"\nroot_classes = ["Toy"]\nadapter = "toy"\n'
                                       '[[targets]]\nrole = "step"\npattern = ""\nstep = true\non_enter = "step"\n'
                                       'on_exit = "step_done"\n[[targets]]\nrole = "a"\npattern = "a"\n'
                                       'on_exit = "a_done"\n')
    model = Toy()
    with instrument(model, tmp_path / "toy.toml") as rec:
        model(torch.ones(1, 4))
    assert [e.lane["seen"] for e in rec.events if e.address == "a"] == [["a"]]


def test_an_interrupted_read_reaches_the_host_and_marks_the_lane(tmp_path):
    """A read interrupted (KeyboardInterrupt) reaches the host, as Ctrl-C should; its lane is marked, and a host that
    goes on gets a whole file."""
    cfg = config(tmp_path, "    return {'v': Later(_read)}\n\nN = []\n\ndef _read():\n    N.append(1)\n"
                           "    if len(N) == 1:\n        raise KeyboardInterrupt\n    return 1")
    model = Toy()
    with warnings.catch_warnings(record=True), instrument(model, cfg, events=tmp_path / "e.jsonl") as rec:
        try:
            model(torch.ones(1, 4))
        except KeyboardInterrupt:
            pass
        model(torch.ones(1, 4))
    first, second = whole(rec, tmp_path / "e.jsonl")
    assert "KeyboardInterrupt" in first["extract_error"] and "v" not in first and second == {"v": 1}


def test_a_read_that_runs_a_recorded_module_is_a_fault_not_a_loop(tmp_path, monkeypatch):
    """A read that runs a recorded module (and reads the table, with the table taking calls every 5): that call runs,
    unrecorded, and the session keeps a fault (no report); every call of the steps is recorded with its value, in
    memory and in the file, in order (a forward pre-hook counts the calls of `a`, the read's included)."""
    monkeypatch.setattr(recorder_module, "FLUSH_ROWS", 5)
    cfg = config(tmp_path, "    m, rec = call.module, call.state['rec']\n"
                           "    return {'v': Later(lambda: (m(torch.ones(1, 4)), len(rec.table), 1)[2])}\n"
                           "\nimport torch")
    model = Toy()
    seen = []
    model.a.register_forward_pre_hook(lambda mod, args: seen.append(1))
    with instrument(model, cfg, events=tmp_path / "e.jsonl") as rec:
        rec.state["rec"] = rec
        for _ in range(4):
            model(torch.ones(1, 4))
    assert len(seen) == 8 and len(rec.faults) == 1 and "Later read called an instrumented module" in rec.faults[0]
    stream = read_events(tmp_path / "e.jsonl")
    assert [e.lane for e in stream.events] == [e.lane for e in rec.events] and stream.end.faults == tuple(rec.faults)
    assert [e.lane for e in rec.events if e.role == "a"] == [{"v": 1}] * 4
    assert sorted(e.seq for e in rec.events) == list(range(8))
