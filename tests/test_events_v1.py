"""Event streams of DeepSeek-OCR v1 sessions on the vendor-shaped stub: counts, order and lane labels.

Expected values come from docs/models/deepseek-ocr-v1.md (a 900x1400 page in Gundam mode has a 2x3 grid,
6 crops; local crops first, then the global view) and from the stub's own config, never from loopmeta's output.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import v1_instrumented_addresses
from loopmeta.events import read_events
from loopmeta.patches import instrument


def by_role(events, role):
    return [e for e in sorted(events, key=lambda e: e.seq) if e.role == role]


def test_targets_resolve_from_dynamically_imported_classes(v1_sessions, v1_model):
    """Classes imported under a dynamic package name (remote code) are found and recorded like any other."""
    assert type(v1_model).__module__.startswith("transformers_modules.deepseek_ai.DeepSeek_OCR.")
    assert type(v1_model.model.sam_model).__module__.startswith("transformers_modules.")
    ev = v1_sessions["gundam_2x3"]["recorder"].events
    recorded = {e.address: e.class_name for e in ev}
    assert recorded["model.sam_model"] == type(v1_model.model.sam_model).__name__
    assert recorded[""] == type(v1_model).__name__ and recorded["model.projector"] == "MlpProjector"


def test_gundam_crops_local_then_global(v1_sessions, v1_model):
    s = v1_sessions["gundam_2x3"]
    ev = s["recorder"].events
    cfg = v1_model.config
    prefill = [e for e in ev if e.step == 0]
    for role in ("vision.sam", "vision.clip", "projector"):
        calls = by_role(ev, role)
        assert [(e.lane["view"], e.lane["batch"], e.lane["resolution"]) for e in calls] == [
            ("local", 6, "640x640"), ("global", 1, "1024x1024")], role
        assert calls[0].lane["grid"] == "2x3"
        assert [e.call_index for e in calls] == [1, 2]
        assert all(e.step == 0 and e.phase == "prefill" for e in calls)
    assert [e.lane["tokens"] for e in by_role(ev, "projector")] == [100, 256]
    counts = Counter(e.address for e in prefill)
    for i in range(cfg.sam_depth):
        assert counts[f"model.sam_model.blocks.{i}"] == 2
    for j in range(cfg.clip_layers):
        assert counts[f"model.vision_model.transformer.layers.{j}"] == 2
    assert counts["model.vision_model.transformer"] == 2
    # call order inside the model call: sam, clip, projector for the local view, then the same for the global view
    top = [e.role for e in sorted(prefill, key=lambda e: e.seq) if e.role in ("vision.sam", "vision.clip", "projector")]
    assert top == ["vision.sam", "vision.clip", "projector"] * 2
    # global-attention blocks are labelled from the module's own parameters
    blocks = {e.address: e.lane["attention"] for e in by_role(ev, "vision.sam.block")}
    for i in range(cfg.sam_depth):
        expect = "global" if i in cfg.sam_global_attn_indexes else "window 14"
        assert blocks[f"model.sam_model.blocks.{i}"] == expect
    # parents: sam blocks under the sam call of the same view; CLIP layers under the transformer call
    sam2 = by_role(ev, "vision.sam")[1]
    assert {e.parent for e in ev if e.role == "vision.sam.block" and e.call_index == 2} == {sam2.key}
    assert {e.parent[0] for e in by_role(ev, "vision.clip.layer")} == {"model.vision_model.transformer"}


def test_no_crop_mode_and_text_only(v1_sessions):
    base = v1_sessions["base"]["recorder"].events
    assert [(e.lane["view"], e.lane["resolution"]) for e in by_role(base, "vision.sam")] == [("global", "1024x1024")]
    assert len(by_role(base, "projector")) == 1
    text = v1_sessions["text"]["recorder"].events
    assert not [e for e in text if e.stage in ("vision.sam", "vision.clip", "projector")]
    assert [e.lane["vision_ran"] for e in by_role(text, "model")] == [False, False]


def test_generate_steps_prefill_then_decode(v1_sessions, v1_model):
    s = v1_sessions["gundam_2x3"]
    ev, new = s["recorder"].events, s["new"]
    prompt_len = s["inputs"]["input_ids"].shape[1]
    steps = by_role(ev, "step")
    assert [(e.step, e.phase, e.lane["seq_len"], e.lane["past_len"]) for e in steps] == [
        (0, "prefill", prompt_len, 0)] + [(i, "decode", 1, prompt_len + i - 1) for i in range(1, new)]
    assert [e.step for e in by_role(ev, "lm_head")] == list(range(new))
    assert all(e.parent == ("", e.step + 1) for e in by_role(ev, "lm_head"))
    n_layers = v1_model.config.num_hidden_layers
    layers = by_role(ev, "llm.layer")
    assert len(layers) == n_layers * new
    assert {e.parent[0] for e in layers} == {"model"}
    # vision only in the prefill
    assert {e.step for e in ev if e.stage == "vision.sam"} == {0}
    # every decode step calls exactly top_k distinct experts in every MoE layer, read from the expert calls
    top_k = v1_model.config.num_experts_per_tok
    for moe in by_role(ev, "llm.moe"):
        experts = [e for e in ev if e.parent == moe.key and e.role == "llm.moe.expert"]
        assert moe.lane["experts_hit"] == sorted(int(e.address.rsplit(".", 1)[1]) for e in experts)
        assert sum(moe.lane["tokens_per_expert"]) == moe.lane["tokens"] * top_k
        if moe.phase == "decode":
            assert len(experts) == top_k  # counted from the expert calls themselves


def test_batch_of_two_samples_runs_per_sample_loop(v1_model):
    from stubs.deepseek_ocr_v1 import MODES

    a = v1_model.prepare_infer_inputs(image_size=(1400, 900), **MODES["gundam"])
    b = v1_model.prepare_infer_inputs(image_size=(1000, 800), **MODES["gundam"])
    length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def pad(x, value):
        return torch.nn.functional.pad(x, (length - x.shape[1], 0), value=value)

    kwargs = dict(
        input_ids=torch.cat([pad(a["input_ids"], 0), pad(b["input_ids"], 0)]),
        images_seq_mask=torch.cat([pad(a["images_seq_mask"], False), pad(b["images_seq_mask"], False)]),
        images=a["images"] + b["images"],
        images_spatial_crop=torch.cat([a["images_spatial_crop"], b["images_spatial_crop"]]),
    )
    with instrument(v1_model, "deepseek_ocr_v1", check_versions=False) as rec, torch.no_grad():
        v1_model(**kwargs)
    sam = by_role(rec.events, "vision.sam")
    # 1400x900 -> grid 3x2 (6 crops), 1000x1000-like 1000x800 -> grid 2x2 (4 crops); per sample local then global
    assert [(e.lane["sample"], e.lane["view"], e.lane["batch"], e.lane.get("grid")) for e in sam] == [
        (0, "local", 6, "3x2"), (0, "global", 1, None), (1, "local", 4, "2x2"), (1, "global", 1, None)]
    assert [e.call_index for e in sam] == [1, 2, 3, 4]


def test_event_file_streams_every_event(v1_sessions):
    s = v1_sessions["gundam_2x3"]
    header, table, end = read_events(s["path"])
    events = list(table.events())
    assert header.session == s["recorder"].session and header.config == "deepseek_ocr_v1"
    assert events == s["recorder"].events
    assert (end.events, end.steps, end.ended) == (len(events), s["new"], "returned")


@pytest.mark.parametrize("size", [(900, 1400), None])
def test_call_indices_follow_the_order_calls_start(v1_model, size):
    """Independent numbering: forward pre-hooks (which run as each call starts) count calls per address."""
    from stubs.deepseek_ocr_v1 import MODES

    inputs = v1_model.prepare_infer_inputs(image_size=size, **MODES["gundam"])
    inputs.pop("plan")
    seen: Counter[str] = Counter()
    started = []

    def hook(address):
        def pre(mod, args):
            seen[address] += 1
            started.append((address, seen[address]))
        return pre

    recorded = v1_instrumented_addresses(v1_model.config)
    handles = [m.register_forward_pre_hook(hook(a)) for a, m in v1_model.named_modules() if a in recorded]
    try:
        with instrument(v1_model, "deepseek_ocr_v1", check_versions=False) as rec:
            v1_model.generate(**inputs, max_new_tokens=2)
    finally:
        for h in handles:
            h.remove()
    assert [(e.address, e.call_index) for e in sorted(rec.events, key=lambda e: e.seq)] == started
