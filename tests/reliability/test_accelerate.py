"""Models dispatched by accelerate (`cpu_offload`, `dispatch_model`: hooks that replace `module.forward` on the
instance) are recorded call for call, counted independently with forward pre-hooks (item 1 of the matrix)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import hook_counts, v1_instrumented_addresses
from loopmeta.patches import instrument
from loopmeta.pipeline import trace_session
from stubs.deepseek_ocr_v1 import MODES, load_stub_model

accelerate = pytest.importorskip("accelerate")


def inputs_of(model):
    kw = model.prepare_infer_inputs(image_size=(1000, 800), **MODES["gundam"])
    kw.pop("plan")
    return kw


def offload(model):
    return accelerate.cpu_offload(model, execution_device=torch.device("cpu"))


def dispatch(model):
    device_map = {"model": "cpu", "lm_head": "cpu"}
    return accelerate.dispatch_model(model, device_map=device_map, main_device="cpu", force_hooks=True)


@pytest.mark.parametrize("place", [offload, dispatch])
@pytest.mark.parametrize("order", ["dispatched, then instrumented", "instrumented, then dispatched"])
def test_every_call_of_a_dispatched_model_is_recorded(place, order):
    model = load_stub_model(seed=3, fresh=True)
    inputs = inputs_of(model)
    addresses = v1_instrumented_addresses(model.config)
    if order.startswith("dispatched"):
        place(model)
        assert "forward" in vars(model.lm_head)  # accelerate's hook sits on the instance
        inst = instrument(model, "deepseek_ocr_v1", check_versions=False)
    else:
        inst = instrument(model, "deepseek_ocr_v1", check_versions=False)
        place(model)
    with inst as rec:
        expected = hook_counts(model, lambda: model.generate(**inputs, max_new_tokens=3), addresses)
    got = Counter(e.address for e in rec.events)
    assert got == expected and got["lm_head"] == 3 and got["model.projector"] == 2
    assert any(len(e.lane.get("experts_hit", [])) for e in rec.events)  # the MoE ledger is there


def test_instance_forward_is_restored():
    model = load_stub_model(seed=3, fresh=True)
    offload(model)
    own = vars(model.lm_head)["forward"]
    with instrument(model, "deepseek_ocr_v1", check_versions=False):
        assert vars(model.lm_head)["forward"] is not own
    assert vars(model.lm_head)["forward"] is own


def test_dispatched_model_gives_an_exact_report():
    model = load_stub_model(seed=3, fresh=True)
    offload(model)
    inputs = inputs_of(model)
    report, _ = trace_session(model, lambda: model.generate(**inputs, max_new_tokens=2), config="deepseek_ocr_v1",
                              check_versions=False)
    assert report.counts["lm_head"] == 2 and report.moe is not None
