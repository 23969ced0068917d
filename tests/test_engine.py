"""The patch engine's guarantees: reversible, numerics unchanged, no tensor ops in wrappers, clear refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from loopmeta.errors import ConfigError, EventFileError, InstrumentationError
from loopmeta.events import read_events
from loopmeta.model_configs import load_config
from loopmeta.patches import instrument, is_instrumented, uninstrument
from loopmeta.patches import instrumentation
from conftest import TensorOps, as_version3, as_version4
from stubs.deepseek_ocr_v1 import MODES, load_stub_model

MISSING = object()


def class_attrs(model):
    classes = {type(m) for m in model.modules()}
    return {cls: (vars(cls).get("forward", MISSING), cls.forward) for cls in classes}


def assert_restored(model, before):
    for cls, (own, resolved) in before.items():
        assert vars(cls).get("forward", MISSING) is own, cls.__name__
        assert cls.forward is resolved, cls.__name__


@pytest.fixture(scope="module")
def inputs(v1_model):
    kw = v1_model.prepare_infer_inputs(image_size=(1280, 640), **MODES["gundam"])
    kw.pop("plan")
    return kw


def test_restores_every_attribute_after_normal_exit(v1_model, inputs):
    before = class_attrs(v1_model)
    with instrument(v1_model, "deepseek_ocr_v1", check_versions=False):
        assert type(v1_model.model.sam_model).__dict__["forward"] is not before[type(v1_model.model.sam_model)][0]
        v1_model.generate(**inputs, max_new_tokens=1)
    assert_restored(v1_model, before)
    assert not is_instrumented(v1_model)


def test_restores_every_attribute_when_the_forward_raises(v1_model):
    before = class_attrs(v1_model)
    bad = torch.full((1, 4), 10**6)  # out of vocabulary: the embedding raises inside the instrumented forward
    with pytest.raises(IndexError):
        with instrument(v1_model, "deepseek_ocr_v1", check_versions=False) as rec:
            v1_model(input_ids=bad)
    assert_restored(v1_model, before)
    assert {(e.address, e.error) for e in rec.events} >= {("", "IndexError"), ("model", "IndexError")}
    with instrument(v1_model, "deepseek_ocr_v1", check_versions=False):  # and it can be instrumented again
        pass


def test_outputs_are_bit_identical(v1_model, inputs):
    with torch.no_grad():
        plain = v1_model(**{k: v for k, v in inputs.items() if k != "attention_mask"}).logits
        plain_seq = v1_model.generate(**inputs, max_new_tokens=3)
    with instrument(v1_model, "deepseek_ocr_v1", check_versions=False), torch.no_grad():
        traced = v1_model(**{k: v for k, v in inputs.items() if k != "attention_mask"}).logits
        traced_seq = v1_model.generate(**inputs, max_new_tokens=3)
    assert torch.equal(plain, traced)
    assert torch.equal(plain_seq, traced_seq)


def test_wrappers_issue_no_tensor_ops(v1_model, inputs):
    with TensorOps() as plain:
        v1_model.generate(**inputs, max_new_tokens=2)
    with instrument(v1_model, "deepseek_ocr_v1", check_versions=False) as rec, TensorOps() as traced:
        v1_model.generate(**inputs, max_new_tokens=2)
    assert len(rec.events) > 50  # the wrappers did run
    assert len(plain.ops) > 1000 and "host:item" in plain.ops  # the vendor reads host values itself
    # the one value the v1 adapter reads: the CPU grid `images_spatial_crop`, once per model call with images
    # (the prefill); everything else is the plain run's sequence exactly
    extra = [op for op in traced.ops if op.startswith("host:")]
    assert len(extra) == len([op for op in plain.ops if op.startswith("host:")]) + 1
    k = next(i for i, (a, b) in enumerate(zip(traced.ops, plain.ops)) if a != b)
    assert traced.ops[k] == "host:tolist" and traced.ops[:k] + traced.ops[k + 1:] == plain.ops


def test_unknown_model_is_refused():
    with pytest.raises(ConfigError, match="no built-in model config for a model of class 'Linear'"):
        instrument(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="is for root classes"):
        instrument(torch.nn.Linear(2, 2), "deepseek_ocr_v1", check_versions=False)
    with pytest.raises(ConfigError, match="unknown model config 'nope'"):
        instrument(torch.nn.Linear(2, 2), "nope")


def test_missing_target_is_refused_and_nothing_is_patched():
    model = load_stub_model()
    del model.model.projector
    before = class_attrs(model)
    with pytest.raises(ConfigError) as err:
        instrument(model, "deepseek_ocr_v1", check_versions=False)
    assert "deepseek_ocr_v1" in str(err.value) and "'projector'" in str(err.value)
    assert "model.sam_model" in str(err.value)  # says what it found near the missing target
    assert_restored(model, before)
    assert not is_instrumented(model)


def test_version_pins(monkeypatch, v1_model):
    before = class_attrs(v1_model)
    monkeypatch.setattr(instrumentation, "installed_version", lambda package: "4.50.0")
    with pytest.raises(ConfigError, match=r"pinned to transformers>=4.45.2,<4.48; installed transformers is 4.50.0"):
        instrument(v1_model, "deepseek_ocr_v1")
    assert_restored(v1_model, before)
    monkeypatch.setattr(instrumentation, "installed_version", lambda package: "4.46.3")
    with instrument(v1_model, "deepseek_ocr_v1"):
        pass


def test_double_instrument_is_refused_and_uninstrument_is_idempotent(v1_model):
    before = class_attrs(v1_model)
    inst = instrument(v1_model, "deepseek_ocr_v1", check_versions=False)
    with pytest.raises(InstrumentationError, match="already instrumented"):
        instrument(v1_model, "deepseek_ocr_v1", check_versions=False)
    uninstrument(v1_model)
    uninstrument(v1_model)
    inst.uninstrument()
    assert_restored(v1_model, before)


def test_two_models_share_class_wrappers_without_mixing(v1_model, inputs):
    other = load_stub_model(seed=1)
    assert type(other) is type(v1_model)
    before = class_attrs(v1_model)
    with instrument(v1_model, "deepseek_ocr_v1", check_versions=False) as a:
        with instrument(other, "deepseek_ocr_v1", check_versions=False) as b:
            other.generate(**inputs, max_new_tokens=1)
        assert len(a.events) == 0 and len(b.events) > 0
        v1_model.generate(**inputs, max_new_tokens=1)
        assert len(a.events) == len(b.events)
    assert_restored(v1_model, before)


def test_a_module_shared_with_a_live_session_is_refused(v1_model):
    other = load_stub_model(seed=2)
    other.model.projector = v1_model.model.projector  # the same module instance in two models
    before = class_attrs(other)
    with instrument(v1_model, "deepseek_ocr_v1", check_versions=False):
        with pytest.raises(InstrumentationError, match=r"\['model.projector'\] are already instrumented"):
            instrument(other, "deepseek_ocr_v1", check_versions=False)
        assert not is_instrumented(other)
    assert_restored(other, before)


def test_auto_config_says_which(v1_model, caplog):
    with caplog.at_level("INFO", logger="loopmeta"):
        with instrument(v1_model, check_versions=False):
            pass
    (record,) = [r for r in caplog.records if "picked 'deepseek_ocr_v1'" in r.getMessage()]
    assert record.levelname == "INFO"


def _calls_line(lines: list[str], edit: Any) -> list[str]:
    """Apply `edit` to the first row of the first calls line (version 4)."""
    at = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "calls")
    data = json.loads(lines[at])
    data["rows"][0] = edit(data["rows"][0])
    return lines[:at] + [json.dumps(data)] + lines[at + 1:]


def _later(lines: list[str], kind: str) -> list[str]:
    """The definitions of `kind` before the first calls line moved after it."""
    calls = _first(lines, "calls")
    early = [line for line in lines[:calls] if json.loads(line)["kind"] == kind]
    rest = [line for line in lines[:calls] if json.loads(line)["kind"] != kind]
    return rest + [lines[calls]] + early + lines[calls + 1:]


def _first(lines: list[str], kind: str) -> int:
    return next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == kind)


@pytest.mark.parametrize("version, mutate, message", [
    (5, lambda lines: ["not json"] + lines[1:], "not JSON"),
    (5, lambda lines: [json.dumps({**json.loads(lines[0]), "version": 99})] + lines[1:], "schema version 99"),
    (5, lambda lines: lines[1:], "first line must be a loopmeta.events header"),
    (5, lambda lines: [], "empty file"),
    (5, lambda lines: _calls_line(lines, lambda row: row[:-1]), "rows must be lists of 13 values"),
    (5, lambda lines: _calls_line(lines, lambda row: [1.5] + row[1:]), "rows must hold ints"),
    (5, lambda lines: _calls_line(lines, lambda row: row[:2] + [7] + row[3:]), "has phase 7, outside"),
    (5, lambda lines: _calls_line(lines, lambda row: row[:4] + [0] + row[5:]), "has call_index 0, outside"),
    (5, lambda lines: _calls_line(lines, lambda row: row[:3] + [999] + row[4:]), "has node 999, outside"),
    (5, lambda lines: _calls_line(lines, lambda row: row[:-1] + [7]), "error must be a string or null"),
    (5, lambda lines: [line for i, line in enumerate(lines) if i != _first(lines, "lane")], "lane id 1, expected 0"),
    (5, lambda lines: [line for i, line in enumerate(lines) if i != _first(lines, "node")], "node id 1, expected 0"),
    (5, lambda lines: lines[:1] + [json.dumps({"kind": "call"})] + lines[1:], "expected kind node, lane"),
    (5, lambda lines: _calls_line(lines, lambda row: row[:6] + [True] + row[7:]), "not true or false"),
    (5, lambda lines: _later(lines, "lane"), "has lane 0, outside .*: no lane record before it"),
    (5, lambda lines: lines[:2] + [json.dumps({**json.loads(lines[1]), "id": len(lines)})] + lines[2:],
     "node id"),
    (5, lambda lines: lines[:2] + [json.dumps({**json.loads(lines[2]), "id": 1, "address": json.loads(lines[1])[
        "address"]})] + lines[3:], "a second node for"),
    (5, lambda lines: lines[:-1] + [json.dumps({**json.loads(lines[-1]), "session": "other"})], "mixes two sessions"),
    (5, lambda lines: _calls_line(lines, lambda row: row[:10] + [row[11], row[10]] + row[12:]),
     "ends before it starts"),
    (5, lambda lines: _calls_line(lines, lambda row: row[:9] + [3] + row[10:]), "has thread 3, outside"),
    (5, lambda lines: _later(lines, "thread"), "has thread 0, outside .*: no thread record before it"),
    (5, lambda lines: [json.dumps({k: v for k, v in json.loads(lines[0]).items() if k != "time_origin_ns"})]
     + lines[1:], "time_origin_ns must be an int"),
    (4, lambda lines: _calls_line(lines, lambda row: row + [0, 0, 0]), "rows must be lists of 10 values"),
    (4, lambda lines: lines[:1] + [json.dumps({"kind": "thread", "id": 0, "native_id": 1, "name": "t"})] + lines[1:],
     "expected kind node, lane, tensors, calls or end, got 'thread'"),
    (4, lambda lines: _calls_line(lines, lambda row: row[:3] + [999] + row[4:]), "has node 999, outside"),
    (3, lambda lines: lines[:1] + [json.dumps({**json.loads(lines[1]), "stage": ["x"]})], "stage must be"),
    (3, lambda lines: lines[:1] + [json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "seq"})],
     "missing fields"),
    (3, lambda lines: lines[:1] + [json.dumps({**json.loads(lines[1]), "phase": "warmup"})], "phase must be one of"),
    (3, lambda lines: lines[:1] + [json.dumps({**json.loads(lines[1]), "call_index": 0})], "call_index"),
    (3, lambda lines: lines[:1] + [json.dumps({**json.loads(lines[1]), "seq": True})], "seq must be"),
])
def test_malformed_event_files_are_refused(v1_model, inputs, tmp_path, version, mutate, message):
    path = tmp_path / "events.jsonl"
    with instrument(v1_model, "deepseek_ocr_v1", events=path, check_versions=False):
        v1_model.generate(**inputs, max_new_tokens=1)
    if version == 3:
        as_version3(path)
    elif version == 4:
        as_version4(path)
    assert read_events(path).header.version == version  # the untouched file is valid
    lines = path.read_text().splitlines()
    path.write_text("\n".join(mutate(lines)) + "\n")
    with pytest.raises(EventFileError, match=message):
        read_events(path)


@pytest.mark.parametrize("toml, message", [
    ('adapter = "adapter"\nstages = ["a"]\n[[targets]]\nrole = "x"\npattern = "lm_head"\nstep = true\non_enter = "missing"\n',
     "'missing' is not a function of adapter 'adapter'"),
    ('adapter = "adapter"\n[[targets]]\nrole = "x"\npattern = "lm_head"\nstep = true\nstage = "b"\n',
     "names stage 'b', not in stages"),
    ('[[targets]]\nrole = "x"\npatern = "lm_head"\n', "unknown keys"),
    ('[[targets]]\nrole = "x"\npattern = "lm_head"\nclasses = "Linear"\n', "target #0 classes must be list of str"),
    ('[[targets]]\nrole = "x"\npattern = "lm_head"\nstep = "yes"\n', "target #0 step must be bool"),
])
def test_config_errors_surface_at_load_time(tmp_path, toml, message):
    (tmp_path / "adapter.py").write_text("def ok(call):\n    return {}\n")
    path = tmp_path / "m.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_steps_start_with_each_root_forward(v1_model, inputs):
    """Independent count: pre-hooks see each root forward start and, for each lm_head call, how many have started."""
    starts, head_steps = [], []
    handles = [v1_model.register_forward_pre_hook(lambda mod, args: starts.append(mod)),
               v1_model.lm_head.register_forward_pre_hook(lambda mod, args: head_steps.append(len(starts) - 1))]
    try:
        with instrument(v1_model, "deepseek_ocr_v1", check_versions=False) as rec:
            v1_model.generate(**inputs, max_new_tokens=3)
    finally:
        for h in handles:
            h.remove()
    assert rec.steps == len(starts) == 3
    heads = [e for e in rec.events if e.address == "lm_head"]
    assert [e.step for e in heads] == head_steps == [0, 1, 2]
    assert [e.phase for e in heads] == ["prefill", "decode", "decode"]


def test_tensor_op_detector_sees_an_op_in_a_wrapper(v1_model, inputs, tmp_path):
    """The no-tensor-op test above can fail: a user config whose extractor runs `.sum()` is caught."""
    (tmp_path / "bad.py").write_text("def bad(call):\n    call.args[0].sum()\n    return {}\n\n\n"
                                     "def step(call):\n    return {'phase': 'prefill'}\n")
    (tmp_path / "bad.toml").write_text('name = "bad"\nroot_classes = ["DeepseekOCRForCausalLM"]\nadapter = "bad"\n'
                                       '[[targets]]\nrole = "lm_head"\npattern = "lm_head"\non_enter = "bad"\n'
                                       '[[targets]]\nrole = "step"\npattern = ""\nstep = true\non_enter = "step"\n')
    with TensorOps() as plain:
        v1_model.generate(**inputs, max_new_tokens=2)
    with instrument(v1_model, tmp_path / "bad.toml") as rec, TensorOps() as traced:
        v1_model.generate(**inputs, max_new_tokens=2)
    assert [e.address for e in rec.events if e.role == "lm_head"] == ["lm_head", "lm_head"]
    assert len(traced.ops) == len(plain.ops) + 2
