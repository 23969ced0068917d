"""The instrumentation lifecycle: construct, enter, exit, enter again, uninstrument twice, an exception inside the
forward, and recorder failures; none of them may break the user's forward or leave a patch behind."""

from __future__ import annotations

import pytest
import torch

from loopmeta.errors import MODEL_ERROR, InstrumentationError, MergeError
from loopmeta.events import EventWriter, read_events
from loopmeta.patches import Instrumentation, is_instrumented
from loopmeta.patches.recorder import Recorder
from loopmeta.pipeline import trace_session
from stubs.deepseek_ocr_v1 import MODES

MISSING = object()


def forwards(model):
    return {cls: vars(cls).get("forward", MISSING) for cls in {type(m) for m in model.modules()}}


def hook_calls(model, address):
    """Independent count of the calls of one module."""
    seen = []
    handle = model.get_submodule(address).register_forward_pre_hook(lambda mod, args: seen.append(1))
    return seen, handle


@pytest.fixture(scope="module")
def inputs(v1_model):
    kw = v1_model.prepare_infer_inputs(image_size=(1000, 800), **MODES["base"])
    kw.pop("plan")
    return kw


def generate(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=2)


def test_construction_has_no_side_effects(v1_model, tmp_path):
    before = forwards(v1_model)
    path = tmp_path / "events.jsonl"
    inst = Instrumentation(v1_model, "deepseek_ocr_v1", events=path, check_versions=False)
    assert not path.exists() and not is_instrumented(v1_model) and forwards(v1_model) == before
    assert inst.recorder is None


def test_with_block_records_and_closes_the_file(v1_model, inputs, tmp_path):
    before = forwards(v1_model)
    path = tmp_path / "events.jsonl"
    seen, handle = hook_calls(v1_model, "lm_head")
    try:
        with Instrumentation(v1_model, "deepseek_ocr_v1", events=path, check_versions=False) as rec:
            assert is_instrumented(v1_model)
            generate(v1_model, inputs)
    finally:
        handle.remove()
    assert forwards(v1_model) == before and not is_instrumented(v1_model)
    assert len([e for e in rec.events if e.address == "lm_head"]) == len(seen) == 2
    header, table, end = read_events(path)  # everything reached the file, which is closed and complete
    events = list(table.events())
    assert header.session == rec.session and events == rec.events
    assert (end.events, end.steps, end.ended) == (len(events), len(starts := [e for e in events if e.address == ""]),
                                                  "returned") and len(starts) == 2


def test_second_use_is_refused_and_the_forward_keeps_working(v1_model, inputs, tmp_path):
    plain = generate(v1_model, inputs)
    inst = Instrumentation(v1_model, "deepseek_ocr_v1", events=tmp_path / "e.jsonl", check_versions=False)
    with inst as rec:
        with pytest.raises(InstrumentationError, match="already active"):
            inst.instrument()
        with pytest.raises(InstrumentationError, match="already entered"):
            with inst:
                pass
        assert is_instrumented(v1_model)  # the refused entry ended nothing
    assert not is_instrumented(v1_model)
    recorded = len(rec.events)
    for again in (inst.instrument, inst.__enter__):
        with pytest.raises(InstrumentationError, match="already used .* create a new one"):
            again()
    assert torch.equal(generate(v1_model, inputs), plain)  # the user's forward is untouched
    assert len(rec.events) == recorded and not is_instrumented(v1_model)


def test_uninstrument_twice_and_before_instrument(v1_model):
    before = forwards(v1_model)
    inst = Instrumentation(v1_model, "deepseek_ocr_v1", check_versions=False)
    inst.uninstrument()  # never instrumented: nothing to do
    inst.instrument()
    inst.uninstrument()
    inst.uninstrument()
    assert forwards(v1_model) == before and not is_instrumented(v1_model)


def test_exception_inside_the_forward_restores_and_closes(v1_model, tmp_path):
    before = forwards(v1_model)
    path = tmp_path / "events.jsonl"
    with pytest.raises(IndexError) as raised:
        with Instrumentation(v1_model, "deepseek_ocr_v1", events=path, check_versions=False) as rec:
            v1_model(input_ids=torch.full((1, 4), 10**6))  # out of vocabulary: raises inside the forward
    assert forwards(v1_model) == before and not is_instrumented(v1_model)
    assert getattr(raised.value, MODEL_ERROR) == (rec.session, 0)  # tagged as the model's own error, type unchanged
    _, table, end = read_events(path)
    events = list(table.events())
    assert {(e.address, e.error) for e in events} >= {("", "IndexError"), ("model", "IndexError")}
    assert events == rec.events and (end.ended, end.error) == ("raised", "IndexError")


@pytest.fixture()
def full_disk(monkeypatch):
    """Every write after the header fails as on a full disk."""
    def full(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(EventWriter, "write_calls", full)
    monkeypatch.setattr(EventWriter, "write_end", full)


def test_a_full_disk_never_breaks_the_forward(v1_model, inputs, tmp_path, full_disk):
    plain = generate(v1_model, inputs)
    seen, handle = hook_calls(v1_model, "lm_head")
    with pytest.warns(RuntimeWarning, match="No space left on device") as warned:
        with Instrumentation(v1_model, "deepseek_ocr_v1", events=tmp_path / "e.jsonl", check_versions=False) as rec:
            assert torch.equal(generate(v1_model, inputs), plain)
    handle.remove()
    assert len([w for w in warned if "loopmeta" in str(w.message)]) == 1  # warned once
    assert "No space left on device" in rec.write_failed and not rec.faults
    assert len([e for e in rec.events if e.address == "lm_head"]) == len(seen)  # memory kept every event
    assert read_events(tmp_path / "e.jsonl").end is None  # the file shows it was cut
    with pytest.warns(RuntimeWarning):
        report, _ = trace_session(v1_model, lambda: generate(v1_model, inputs), config="deepseek_ocr_v1",
                                  check_versions=False, events=tmp_path / "e2.jsonl")
    assert any("events file is incomplete" in n for n in report.notes)


def test_a_full_disk_while_the_users_exception_unwinds(v1_model, tmp_path, full_disk):
    with pytest.warns(RuntimeWarning):
        with pytest.raises(IndexError):  # the user's own exception comes through, not an OSError
            with Instrumentation(v1_model, "deepseek_ocr_v1", events=tmp_path / "e.jsonl", check_versions=False):
                v1_model(input_ids=torch.full((1, 4), 10**6))
    assert not is_instrumented(v1_model)


def test_a_recorder_bug_never_breaks_the_forward(v1_model, inputs, monkeypatch):
    plain = generate(v1_model, inputs)

    def broken(self, *args, **kwargs):
        raise RuntimeError("recorder bug")

    monkeypatch.setattr(Recorder, "enter", broken)
    with Instrumentation(v1_model, "deepseek_ocr_v1", check_versions=False) as rec:
        assert torch.equal(generate(v1_model, inputs), plain)
    assert rec.events == [] and rec.faults and "recorder bug" in rec.faults[0] and rec.end.faults == tuple(rec.faults)
    with pytest.raises(MergeError, match="(?s)could not be recorded.*recorder bug"):
        trace_session(v1_model, lambda: generate(v1_model, inputs), config="deepseek_ocr_v1", check_versions=False)


def test_instrument_then_enter_is_one_session(v1_model, inputs):
    """`with instrument(model) as rec:` enters the instrumentation `instrument()` started, once."""
    from loopmeta.patches import instrument

    inst = instrument(v1_model, "deepseek_ocr_v1", check_versions=False)
    with inst as rec:
        generate(v1_model, inputs)
    assert rec is inst.recorder and rec.end.ended == "returned" and not is_instrumented(v1_model)


def test_a_failure_while_patching_leaves_nothing_patched(v1_model, tmp_path, monkeypatch):
    from loopmeta.common import attributes

    before = forwards(v1_model)
    real_apply, count = attributes.Swap.apply.__func__, [0]

    def flaky(cls, owner, name, value):
        count[0] += 1
        if count[0] == 4:
            raise RuntimeError("cannot set attribute")
        return real_apply(cls, owner, name, value)

    monkeypatch.setattr(attributes.Swap, "apply", classmethod(flaky))
    with pytest.raises(InstrumentationError, match="nothing is left patched"):
        Instrumentation(v1_model, "deepseek_ocr_v1", events=tmp_path / "e.jsonl", check_versions=False).instrument()
    monkeypatch.undo()
    assert forwards(v1_model) == before and not is_instrumented(v1_model)
    with Instrumentation(v1_model, "deepseek_ocr_v1", check_versions=False):  # and it can be instrumented again
        pass
