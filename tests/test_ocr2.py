"""Real vendor code: transformers' native DeepSeek-OCR 2 (tiny random weights) through the real processor.

Expected bounds are computed from the processor outputs and the model's own module tree; the MoE selection is
compared with an independent forward hook on every router.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_transformers5
from loopmeta.pipeline import PROBE_STEPS
from loopmeta.sessions.pages import synthetic_page
from loopmeta.merge.loops import expand, walk
from loopmeta.model_configs import load_config
from loopmeta.patches import instrument
from loopmeta.pipeline import trace_session
from loopmeta.report import session_report
from loopmeta.writers import write_report

pytestmark = [needs_transformers5, pytest.mark.real_model]
NEW = 3
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    from loopmeta.builtin_models import deepseek_ocr2_tiny as T

    return T


def router_ids(model, run):
    """Independent ledger: unique top-k ids of every router call, in call order."""
    rows = []
    hooks = [m.register_forward_hook(lambda mod, args, out, a=a: rows.append((a, sorted(set(out[2].flatten().tolist())))))
             for a, m in model.named_modules() if type(m).__name__ == "DeepseekOcr2TextTopkRouter"]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return rows


def session(tiny, experts="grouped_mm", image=(1600, 1200)):
    model = tiny.build_model("tiny", experts_implementation=experts)
    inputs = tiny.prepare_inputs(tiny.build_processor(), synthetic_page(*image))
    run = lambda: model.generate(**inputs, max_new_tokens=NEW, do_sample=False)  # noqa: E731
    report, _ = trace_session(model, run, probe="auto")
    return model, inputs, report, run


@pytest.mark.parametrize("image", [(1600, 1200), (1600, 800), (640, 480)])
def test_loop_bounds_from_processor_and_config(tiny, image, tmp_path):
    model, inputs, report, run = session(tiny, image=image)
    crops = int(inputs["num_local_patches"].sum()) if "pixel_values_local" in inputs else 0
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == 256 + 144 * crops + 1
    tower = [l for l in walk(report.loops) if l.address == "model.vision_tower"]
    assert len(tower) == 1
    expected_lanes = [("global", 1, "1024x1024")] + ([("local", crops, "768x768")] if crops else [])
    assert [(l["view"], l["batch"], l["resolution"]) for l in tower[0].lanes] == expected_lanes
    assert tower[0].bound == len(expected_lanes)
    sam_depth = len(model.model.vision_tower.sam_encoder.layers)
    enc_depth = len(model.model.vision_tower.vision_encoder.layers)
    (sam,) = [l for l in walk(report.loops) if l.container == "model.vision_tower.sam_encoder.layers"]
    (enc,) = [l for l in walk(report.loops) if l.container == "model.vision_tower.vision_encoder.layers"]
    assert (sam.kind, sam.bound, enc.kind, enc.bound) == ("for", sam_depth, "for", enc_depth)
    (steps,) = [l for l in report.loops if l.role == "step"]
    assert (steps.kind, steps.bound) == ("parfor", NEW)
    prompt = inputs["input_ids"].shape[1]
    assert [(s["phase"], s["seq_len"], s["past_len"]) for s in report.steps] == [
        ("prefill", prompt, 0)] + [("decode", 1, prompt + i - 1) for i in range(1, NEW)]
    counts = expand(report.loops)
    n_layers = len(model.model.language_model.layers)
    assert counts["lm_head"] == NEW and counts[f"model.language_model.layers.{n_layers - 1}"] == NEW
    assert counts["model.vision_tower"] == len(expected_lanes)
    assert report.probe["traced_steps"] == min(NEW, PROBE_STEPS)
    write_report(report, tmp_path)  # exactness is checked before anything is written
    # vision ran before the first forward: it is in step 0 only, and the repeat over views stays visible
    assert [(g["steps"], g["phase"]) for g in report.stage_view] == [([0], "prefill"), (list(range(1, NEW)), "decode")]
    repeat = f"model.vision_tower parfor {len(expected_lanes)} > " if crops else ""
    assert report.stage_view[0]["stages"]["vision.encoder"].startswith(repeat + "model.vision_tower.vision_encoder {")
    assert {report.stage_view[1]["stages"][s] for s in ("vision.sam", "vision.encoder", "projector")} == {""}
    # MoE ledger == the routers' own top-k ids, per (layer, step), in order
    ledger = [(r["address"] + ".gate", r["experts"]) for r in report.moe["rows"]]
    assert ledger == router_ids(model, run)
    top_k = model.config.text_config.num_experts_per_tok
    assert all(r["k"] == top_k for r in report.moe["rows"] if r["step"] > 0)


def test_both_experts_implementations_agree(tiny):
    a = session(tiny, experts="grouped_mm")[2]
    b = session(tiny, experts="eager")[2]
    assert expand(a.loops) == expand(b.loops)
    assert a.moe["rows"] == b.moe["rows"]
    impls = {l.lanes[0].get("experts_implementation") for r in (a, b) for l in walk(r.loops) if l.role == "llm.moe"}
    assert impls == {"grouped_mm", "eager"}


def test_expert_ledger_is_the_one_host_read_and_can_be_switched_off(tiny):
    """With the ledger: exactly one host read (`tolist` of the router's top-k ids) per MoE call and no tensor op;
    without it: the plain run's sequence of torch calls exactly, and no MoE selection in the report."""
    from conftest import TensorOps

    model = tiny.build_model("tiny")
    inputs = tiny.prepare_inputs(tiny.build_processor(), synthetic_page(640, 480))
    run = lambda: model.generate(**inputs, max_new_tokens=2, do_sample=False)  # noqa: E731
    with TensorOps() as plain:
        run()
    with instrument(model, options={"expert_ledger": True}) as rec, TensorOps() as on:
        run()
    with instrument(model, options={"expert_ledger": False}) as rec_off, TensorOps() as off:
        run()
    gates = [e for e in rec.events if e.role == "llm.moe.gate"]
    assert len(gates) == 2 * sum(1 for m in model.modules() if type(m).__name__ == "DeepseekOcr2TextMoe")
    assert off.ops == plain.ops
    assert [op for op in on.ops if op != "host:tolist"] == [op for op in plain.ops if op != "host:tolist"]
    assert on.ops.count("host:tolist") == plain.ops.count("host:tolist") + len(gates)
    assert not any("router" in e.lane for e in rec_off.events)
    assert session_report(rec_off.events, load_config("deepseek_ocr2_hf"), model_class="m", end=rec_off.end).moe is None


def test_the_ledger_reads_the_router_ids_when_the_step_ends(tiny, monkeypatch):
    """On an accelerator the ledger's host reads wait for the step's end (a read mid-step would make the host wait
    for the device once per MoE call; here the CPU is taken for one): in each step, the reads it adds come after the
    step's last torch call (a forward hook on the root marks the end), all together, one per router call; what they
    read matches a hook on every router."""
    from conftest import TensorOps
    from loopmeta.model_configs import deepseek_ocr2_hf

    monkeypatch.setattr(deepseek_ocr2_hf, "at_step_end", lambda ids: True)

    model = tiny.build_model("tiny")
    inputs = tiny.prepare_inputs(tiny.build_processor(), synthetic_page(640, 480))
    routers = sum(1 for m in model.modules() if type(m).__name__ == "DeepseekOcr2TextTopkRouter")
    run = lambda: model.generate(**inputs, max_new_tokens=3, do_sample=False)  # noqa: E731
    sinks: list = []
    ends = model.register_forward_hook(lambda *a: sinks[-1].ops.append("mark:step end"))
    try:
        with TensorOps() as plain:
            sinks.append(plain)
            run()
        with instrument(model) as rec, TensorOps() as on:
            sinks.append(on)
            run()
    finally:
        ends.remove()
    steps = lambda ops: "|".join(ops).split("mark:step end")[:-1]  # noqa: E731
    assert len(steps(on.ops)) == len(steps(plain.ops)) == 3
    for traced, untraced in zip(steps(on.ops), steps(plain.ops)):
        ours = traced.strip("|").split("|")
        assert ours[len(ours) - routers:] == ["host:tolist"] * routers  # together, after every torch call
        assert ours[:len(ours) - routers] == untraced.strip("|").split("|")
    expected = [ids for _, ids in router_ids(model, run)]
    assert [e.lane["router"]["experts_hit"] for e in sorted(rec.events, key=lambda e: e.seq)
            if e.role == "llm.moe.gate"] == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_on_cuda_the_ledger_adds_one_wait_per_router_call_and_matches_the_routers(tiny):
    """On CUDA the ledger's one host read per router call is the only wait the instrumentation adds that torch's sync
    debug mode detects (it counts the plain session's synchronizing calls plus one per router call, and none more
    with the ledger off), and the experts hit match a forward hook on every router, read in the same run."""
    import warnings

    model = tiny.build_model("tiny", device="cuda")
    inputs = tiny.prepare_inputs(tiny.build_processor(), synthetic_page(640, 480)).to("cuda")
    run = lambda: model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)  # noqa: E731

    def syncs(fn):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return sum("synchronizing" in str(w.message) for w in seen)

    plain = syncs(run)
    with instrument(model):
        traced = syncs(run)
    with instrument(model, options={"expert_ledger": False}):
        unread = syncs(run)
    routers = sum(1 for m in model.modules() if type(m).__name__ == "DeepseekOcr2TextTopkRouter")
    assert routers > 0 and traced == plain + 3 * routers and unread == plain  # 3 steps
    with instrument(model) as rec:  # the hooks read in the same run: the device's numerics may vary between runs
        expected = [ids for _, ids in router_ids(model, run)]
    assert [e.lane["router"]["experts_hit"] for e in sorted(rec.events, key=lambda e: e.seq)
            if e.role == "llm.moe.gate"] == expected


def test_run_traced_without_arguments(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "run_traced.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "loopmeta-out"
    drawing = ["report.svg"] if shutil.which("dot") else []
    assert sorted(p.name for p in out.iterdir()) == sorted(["events.jsonl", "report.html", "report.json", "report.md",
                                                            "report.txt", "report_ops.csv", "trace.json", *drawing])
    assert "model.vision_tower parfor 2 axis=view" in done.stdout
    assert "parfor 4 axis=decode_step" in done.stdout
    assert "so far" not in done.stderr and "running the instrumented session" not in done.stderr  # not a terminal
