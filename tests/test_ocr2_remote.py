"""DeepSeek-OCR 2's remote code (config `deepseek_ocr2_remote`) on its stub: events and reports, page by page.

Expected values come from docs/models/deepseek-ocr2-remote.md, computed here: the crop grid from the stated rule
(tests/oracles/ocr2_crops.py), image positions (base/64)^2 + 1 + P * (image_size/64)^2, feature rows 257 + 144 * P,
call counts from forward hooks and `named_modules()`; never read back from the report.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import TensorOps, hook_counts, needs_transformers4
from oracles.ocr2_crops import expected_crops
from loopmeta.merge.loops import expand, walk
from loopmeta.pipeline import trace_session

pytestmark = needs_transformers4

TAIL = len("\nFree OCR.")  # the stub tokenizes by character; the prompt is stripped (`plain` template)
CARD = dict(base_size=1024, image_size=768, crop_mode=True)


def expected(width, height, base_size=1024, image_size=768, crop_mode=True):
    """(grid or None, crops P, image positions, feature rows) for one page, from the facts' formulas."""
    plan = expected_crops(width, height) if crop_mode else None
    crops = plan.num_crops if plan else 0
    view = base_size if crop_mode else image_size
    positions = (view // 64) ** 2 + 1 + crops * (image_size // 64) ** 2
    features = (view // 64) ** 2 + 1 + 144 * crops
    return ((plan.cols, plan.rows) if crops else None), crops, positions, features


@pytest.fixture(scope="module")
def model():
    from stubs.deepseek_ocr2_remote import load_stub_model

    return load_stub_model()


def instrumented(model) -> set[str]:
    """What the config records, listed from the module tree: root, model, SAM and its blocks, the encoder and its
    layers, the projector, the LLM layers, in MoE layers the block, gate, experts and shared experts; lm_head."""
    names = {a for a, _ in model.named_modules()}
    wanted = {"", "model", "model.sam_model", "model.qwen2_model", "model.projector", "lm_head"}
    for a in names:
        parts = a.split(".")
        if a.startswith(("model.sam_model.blocks.", "model.qwen2_model.model.model.layers.", "model.layers.")) \
                and parts[-1].isdigit() and len(parts) in (4, 6, 3):
            wanted.add(a)
        if a.startswith("model.layers.") and type(dict(model.named_modules())[a]).__name__ == "DeepseekV2MoE":
            wanted |= {a, f"{a}.gate", f"{a}.shared_experts"} | {e for e in names if e.startswith(f"{a}.experts.")
                                                                  and e.count(".") == 5}
    return wanted


def session(model, page, new=2, **settings):
    inputs = model.prepare_infer_inputs(page=page, **{**CARD, **settings})
    inputs.pop("plan")
    run = lambda: model.generate(**inputs, max_new_tokens=new)  # noqa: E731
    report, _ = trace_session(model, run, config="auto", probe=None, check_versions=False)
    return report, inputs, run


def find(report, address):
    return [loop for loop in walk(report.loops) if loop.address == address]


PAGES = [((1600, 1200), {}), ((1000, 800), {}), ((4000, 800), {}), ((640, 480), {}),
         ((1600, 1200), dict(crop_mode=False, image_size=768)), ((1600, 1200), dict(crop_mode=False, image_size=1024))]


@pytest.mark.parametrize("page,settings", PAGES, ids=["1600x1200", "1000x800", "4000x800", "640x480", "nocrop768",
                                                      "nocrop1024"])
def test_a_page(model, page, settings):
    grid, crops, positions, features = expected(*page, **{**CARD, **settings})
    report, inputs, run = session(model, page, **settings)
    assert report.config == "deepseek_ocr2_remote" and not report.warnings
    prefill = report.steps[0]
    assert (prefill["phase"], prefill["seq_len"], prefill["image_positions"]) == ("prefill", 1 + positions + TAIL,
                                                                                  positions)
    (model_call,) = [l for l in find(report, "model") if l.lanes[0].get("vision_ran")]
    assert model_call.lanes[0]["vision_features"] == features
    assert prefill["images"] == [{"crops": crops, **({"grid": f"{grid[0]}x{grid[1]}"} if crops else {})}]
    view = settings.get("image_size", 1024) if not settings.get("crop_mode", True) else 1024
    globals_ = dict(view="global", sample=0, batch=1, resolution=f"{view}x{view}", step=0, phase="prefill")
    want = ([dict(view="local", sample=0, batch=crops, resolution="768x768", grid=f"{grid[0]}x{grid[1]}", step=0,
                  phase="prefill")]
            if crops else []) + [globals_]
    for address in ("model.sam_model", "model.qwen2_model", "model.projector"):
        (loop,) = find(report, address)
        assert (loop.kind, loop.bound) == (("parfor", 2) if crops else ("call", 1)), address
        tokens = [{"tokens": 144}] * bool(crops) + [{"tokens": (view // 64) ** 2}]
        assert loop.lanes == [w | t for w, t in zip(want, tokens)] if address == "model.projector" else \
            loop.lanes == want, address
    hooks = hook_counts(model, run)
    assert expand(report.loops) == Counter({a: hooks[a] for a in instrumented(model) if hooks[a]})


def test_stacks_select_and_steps(model):
    new = 4
    report, inputs, run = session(model, (1600, 1200), new=new)
    prompt = inputs["input_ids"].shape[1]
    assert [(s["step"], s["phase"], s["seq_len"], s["past_len"], s["kv_len"]) for s in report.steps] == [
        (0, "prefill", prompt, 0, prompt)] + [(t, "decode", 1, prompt + t - 1, prompt + t) for t in range(1, new)]
    (root,) = report.loops
    assert (root.kind, root.bound, root.axis) == ("parfor", new, "decode_step")
    sam = model.model.sam_model.blocks
    (blocks,) = [l for l in walk(report.loops) if l.container == "model.sam_model.blocks"]
    assert (blocks.kind, blocks.bound) == ("for", len(sam))
    assert [l["attention"] for l in blocks.lanes[:len(sam)]] == [
        "global" if b.window_size == 0 else f"window {b.window_size}" for b in sam]
    layers = model.model.qwen2_model.model.model.layers
    (encoder,) = [l for l in walk(report.loops) if l.container == "model.qwen2_model.model.model.layers"]
    assert (encoder.kind, encoder.bound, encoder.class_name) == ("for", len(layers), "Qwen2DecoderLayer")
    assert [(l["batch"], l["seq_len"]) for l in encoder.lanes[:: len(layers)]] == [(6, 288), (1, 512)]
    cfg = model.config
    moe = [l for l in walk(report.loops) if l.container == "model.layers" and l.kind == "for"]
    assert [l.members for l in moe] == [list(range(cfg.first_k_dense_replace, cfg.num_hidden_layers))] * 2
    selects = [l for l in walk(report.loops) if l.kind == "select"]
    assert all(s.container_size == cfg.n_routed_experts for s in selects)
    assert {len(p) for p in selects[1].picks} == {cfg.num_experts_per_tok}  # decode: one token, top-k experts
    # the ledger's experts are the expert modules that ran, call by call (forward hooks)
    ran = []
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: ran.append(n)) for n, m in model.named_modules()
             if ".mlp.experts." in n and n.count(".") == 5]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    rows = report.moe["rows"]
    assert sum(len(r["experts"]) for r in rows) == len(ran)
    for r in rows:
        assert r["k"] == len(r["experts"]) and sum(r["tokens"]) == (prompt if r["step"] == 0 else 1) * 2
    assert [l.kind for l in find(report, "model.qwen2_model.query_768")] == [] and not any(
        "query" in a for a in report.counts)


def test_no_tensor_value_read_but_the_declared_ones(model):
    from loopmeta.patches import instrument

    inputs = model.prepare_infer_inputs(page=(1600, 1200), **CARD)
    inputs.pop("plan")
    with TensorOps() as plain:
        model.generate(**inputs, max_new_tokens=2)
    with instrument(model, check_versions=False), TensorOps() as traced:
        model.generate(**inputs, max_new_tokens=2)
    assert [op for op in traced.ops if op != "host:tolist"] == [op for op in plain.ops if op != "host:tolist"]
    # one prefill: the crop grid and the image-position mask, one host copy each (the TOML's reads_values)
    assert traced.ops.count("host:tolist") == plain.ops.count("host:tolist") + 2


def test_text_only_prompt_runs_no_vision(model):
    report, inputs, run = session(model, None, prompt="Free OCR.")
    assert not any(a.startswith(("model.sam_model", "model.qwen2_model", "model.projector")) for a in report.counts)
    assert report.steps[0]["seq_len"] == 1 + len("Free OCR.") and not report.warnings
    assert all(g["stages"]["vision.sam"] == "" for g in report.stage_view)
    hooks = hook_counts(model, run)
    assert expand(report.loops) == Counter({a: hooks[a] for a in instrumented(model) if hooks[a]})


def test_a_batch_of_two_samples_built_by_hand(model):
    a = model.prepare_infer_inputs(page=(1600, 1200), **CARD)
    b = model.prepare_infer_inputs(page=(1200, 1600), **CARD, seed=1)
    grids = [expected(1600, 1200)[0], expected(1200, 1600)[0]]
    inputs = {k: torch.cat([a[k], b[k]]) for k in ("input_ids", "images_seq_mask", "images_spatial_crop",
                                                  "attention_mask")}
    inputs["images"] = a["images"] + b["images"]
    run = lambda: model(**inputs)  # noqa: E731
    report, _ = trace_session(model, run, probe=None, check_versions=False)
    hooks = hook_counts(model, run)
    for address in ("model.sam_model", "model.qwen2_model", "model.projector"):
        assert hooks[address] == 4
        (loop,) = find(report, address)
        assert [(l["view"], l["sample"], l["batch"], l.get("grid")) for l in loop.lanes] == [
            ("local", 0, 6, "%dx%d" % grids[0]), ("global", 0, 1, None), ("local", 1, 6, "%dx%d" % grids[1]),
            ("global", 1, 1, None)]
    positions = 2 * expected(1600, 1200)[2]
    assert report.steps[0]["image_positions"] == positions and report.steps[0]["batch"] == 2
    (call,) = find(report, "model")
    assert call.lanes[0]["vision_features"] == positions and not report.warnings
    assert expand(report.loops) == Counter({a: hooks[a] for a in instrumented(model) if hooks[a]})


def test_the_probe_aligns_and_invents_no_query_call(model):
    inputs = model.prepare_infer_inputs(page=(1000, 800), **CARD)
    inputs.pop("plan")
    report, _ = trace_session(model, lambda: model.generate(**inputs, max_new_tokens=3), probe="auto",
                              check_versions=False)
    assert report.probe["traced_steps"] == 3 and report.probe["events_aligned"] > 0
    probed = expand(report.probe["loops"])
    probed.pop("<generate>")
    hooks = hook_counts(model, lambda: model.generate(**inputs, max_new_tokens=3))
    assert probed == +hooks
    assert not any("query" in a for a in probed) and hooks["model.qwen2_model.query_1024"] == 0


@pytest.fixture(scope="module")
def bf16_model():
    """The stub in bfloat16, as infer()'s images need it on a CPU (docs/models/deepseek-ocr2-remote.md#cpu)."""
    from stubs.deepseek_ocr2_remote import load_stub_model

    return load_stub_model(seed=3).to(torch.bfloat16)


def traced_infer(model, tmp_path, **settings):
    """A session of the stub's own infer() on a 1600x1200 page (its generate capped at 2 steps, .cuda() a no-op)."""
    from PIL import Image

    from loopmeta.model_configs.deepseek_remote import cuda_as_noop, generate_capped

    page = tmp_path / "page.png"
    Image.new("RGB", (1600, 1200), "white").save(page)
    run = lambda: model.infer(None, prompt="<image>\nFree OCR. ", image_file=str(page),  # noqa: E731
                              output_path=str(tmp_path / "out"), eval_mode=True, **settings)
    with cuda_as_noop(), generate_capped(type(model), 2):
        report, _ = trace_session(model, run, probe=None, check_versions=False)
    return report


def test_infer_defaults_on_a_large_page_are_warned_about_in_every_form(bf16_model, tmp_path):
    """infer()'s own image_size=640: 100 positions per crop for 144 feature rows per crop; the report says so."""
    import json
    from html import escape

    from loopmeta.report import read_report
    from loopmeta.writers import write_report

    report = traced_infer(bf16_model, tmp_path)
    _, crops, _, features = expected(1600, 1200)
    positions = 256 + 1 + 100 * crops  # (640 / 64)^2 per crop
    assert (positions, features) == (857, 1121)
    line = (f"image positions {positions} < vision features {features}: the rows past the positions, the separator "
            "and (part of) the global view, never reach the LLM; pass image_size=768")
    assert report.warnings == [line] and report.steps[0]["image_positions"] == positions
    paths = write_report(report, tmp_path / "report", svg=False, html=True)
    assert f"WARNING: {line}" in paths["text"].read_text().splitlines()[:3]
    assert f"> **WARNING: {line}**" in paths["markdown"].read_text()
    assert f'<p class="warning">WARNING: {escape(line)}</p>' in paths["html"].read_text()
    assert json.loads(paths["json"].read_text())["warnings"] == [line]
    assert read_report(paths["json"]).warnings == [line]


def test_the_model_card_settings_give_no_warning(bf16_model, tmp_path):
    report = traced_infer(bf16_model, tmp_path, base_size=1024, image_size=768, crop_mode=True)
    assert report.warnings == [] and report.steps[0]["image_positions"] == expected(1600, 1200)[2] == 1121


def test_the_stub_keeps_the_facts_call_chain(model, tmp_path):
    """Forward hooks on the stub alone: per sample crops then the global view, each of sam -> encoder -> projector;
    the encoder's layers three modules down, in a per-instance inner class; vision only in the prefill."""
    inner = model.model.qwen2_model.model.model
    from transformers import Qwen2Model

    assert "<locals>" in type(inner).__qualname__ and isinstance(inner, Qwen2Model)
    order = []
    chain = ("model.sam_model", "model.qwen2_model", "model.qwen2_model.model", "model.qwen2_model.model.model",
             "model.qwen2_model.model.model.layers.0", "model.projector")
    modules = dict(model.named_modules())
    hooks = [modules[a].register_forward_pre_hook(lambda m, args, kw, a=a: order.append(
        (a, tuple((args or tuple(kw.values()))[0].shape))), with_kwargs=True) for a in chain]
    try:
        inputs = model.prepare_infer_inputs(page=(1600, 1200), **CARD)
        inputs.pop("plan")
        model.generate(**inputs, max_new_tokens=3)
    finally:
        for h in hooks:
            h.remove()
    width = inner.config.hidden_size
    assert [a for a, _ in order] == list(chain) * 2  # crops, then the global view; never in the decode steps
    assert [s for a, s in order if a in ("model.sam_model", "model.projector")] == [
        (6, 3, 768, 768), (6, 144, width), (1, 3, 1024, 1024), (1, 256, width)]
    assert [s for a, s in order if a.endswith("layers.0")] == [(6, 288, width), (1, 512, width)]


def test_the_stub_infer_has_the_vendor_signature(model, tmp_path):
    import inspect

    from PIL import Image

    from loopmeta.model_configs.deepseek_remote import cuda_as_noop

    defaults = {k: p.default for k, p in inspect.signature(model.infer).parameters.items() if k != "tokenizer"}
    assert defaults == dict(prompt="", image_file="", output_path="", base_size=1024, image_size=640, crop_mode=True,
                            test_compress=False, save_results=False, eval_mode=False)
    with pytest.raises(IndexError):  # a text-only prompt cannot go through infer()
        model.infer(None, prompt="Free OCR.", output_path=str(tmp_path))
    asked = []
    real = type(model).generate
    type(model).generate = lambda self, **kw: asked.append(kw["max_new_tokens"]) or kw["input_ids"]
    try:
        Image.new("RGB", (640, 480)).save(tmp_path / "p.png")
        with cuda_as_noop():
            model.infer(None, prompt="<image>Free OCR.", image_file=str(tmp_path / "p.png"), output_path=str(tmp_path))
    finally:
        del type(model).generate
    assert asked == [8192] and type(model).generate is real and (tmp_path / "images").is_dir()
