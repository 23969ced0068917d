"""Merger on v1 stub sessions: exact loop bounds, alignment with TorchLens, refusals, stable JSON.

Expected bounds come from the stub's config and docs/models/deepseek-ocr-v1.md; observed counts from plain forward hooks.
"""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch

from conftest import end_of, hook_counts, v1_instrumented_addresses
from loopmeta.errors import AlignmentError, ExactnessError, MergeError
from loopmeta.merge.loops import check_exact, expand, walk
from loopmeta.model_configs import load_config
from loopmeta.pipeline import Probe, probe_section, trace_session
from loopmeta.report import read_report, session_report
from loopmeta.writers import to_text, write_report
from stubs.deepseek_ocr_v1 import MODES

NEW = 3


def gen_inputs(model, size):
    inputs = model.prepare_infer_inputs(image_size=size, **MODES["gundam"])
    inputs.pop("plan")
    return inputs


def probe_of(model, inputs, steps=2):
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    return Probe(model.generate, (inputs["input_ids"],), {**rest, "max_new_tokens": steps})


@pytest.fixture(scope="module")
def traced(v1_model):
    inputs = gen_inputs(v1_model, (900, 1400))
    report, _ = trace_session(v1_model, lambda: v1_model.generate(**inputs, max_new_tokens=NEW),
                              config="deepseek_ocr_v1", probe=probe_of(v1_model, inputs), check_versions=False)
    return report, inputs


def find(loops, **kw):
    hits = [l for l in walk(loops) if all(getattr(l, k) == v for k, v in kw.items())]
    assert hits, kw
    return hits


def test_loop_bounds_match_the_facts(traced, v1_model):
    report, _ = traced
    cfg = v1_model.config
    (steps,) = report.loops
    assert (steps.kind, steps.bound, steps.axis) == ("parfor", NEW, "decode_step")
    assert [v.iterations for v in steps.variants] == [[0], list(range(1, NEW))]  # prefill with vision, decode
    for address in ("model.sam_model", "model.vision_model", "model.projector"):
        (loop,) = find(report.loops, address=address)
        assert (loop.kind, loop.bound) == ("parfor", 2)
        assert [(l["view"], l["batch"]) for l in loop.lanes] == [("local", 6), ("global", 1)]
    (blocks,) = find(report.loops, container="model.sam_model.blocks")
    assert (blocks.kind, blocks.bound, blocks.members) == ("for", cfg.sam_depth, list(range(cfg.sam_depth)))
    (clip,) = find(report.loops, container="model.vision_model.transformer.layers")
    assert (clip.kind, clip.bound) == ("for", cfg.clip_layers)
    # layer 0 is dense (a call of its own), the MoE layers 1..n-1 one stack; in prefill and in decode
    dense = find(report.loops, address="model.layers.0")
    assert all(l.kind == "call" for l in dense) and len(dense) == 2
    moe_layers = find(report.loops, container="model.layers", kind="for")
    assert [l.members for l in moe_layers] == [list(range(1, cfg.num_hidden_layers))] * 2
    selects = find(report.loops, kind="select")
    assert all(s.container_size == cfg.n_routed_experts for s in selects)
    decode_select = selects[1]
    assert [len(p) for p in decode_select.picks] == [cfg.num_experts_per_tok] * ((NEW - 1) * (cfg.num_hidden_layers - 1))
    assert [l.kind for l in find(report.loops, address="lm_head")] == ["call", "call"]


def test_images_and_view_rounds_match_the_inputs_and_the_call_order(traced, v1_model):
    """The crop grid and crop count per image from the inputs the model receives; the rounds from forward hooks."""
    report, inputs = traced
    (patches, _), = inputs["images"]
    cols, rows = inputs["images_spatial_crop"][0].tolist()
    assert report.steps[0]["images"] == [{"crops": patches.shape[0], "grid": f"{cols}x{rows}"}]
    assert "images" not in report.steps[1]
    vision = ("model.sam_model", "model.vision_model", "model.projector")
    order: list[str] = []
    hooks = [v1_model.get_submodule(a).register_forward_pre_hook(lambda m, args, a=a: order.append(a)) for a in vision]
    try:
        v1_model.generate(**inputs, max_new_tokens=1)
    finally:
        for h in hooks:
            h.remove()
    assert order == list(vision) * 2  # local crops through all three, then the global view
    assert {tuple(find(report.loops, address=a)[0].rounds) for a in vision} == {vision}
    assert ("rounds over view: 2 rounds, each calls model.sam_model, then model.vision_model, then model.projector"
            in to_text(report))
    assert f"step 0: 1 image: image 0: {patches.shape[0]} crops (grid {cols}x{rows}) + global view\n" in to_text(report)


def test_expansion_equals_independent_hook_counts(traced, v1_model):
    report, inputs = traced
    hooks = hook_counts(v1_model, lambda: v1_model.generate(**inputs, max_new_tokens=NEW))
    got = expand(report.loops)
    bound = v1_instrumented_addresses(v1_model.config)
    assert got == Counter({a: hooks[a] for a in bound if hooks[a]})
    assert got["model.sam_model.blocks.1"] == 2 and got["lm_head"] == NEW and got["model.layers.2"] == NEW
    # the probe (prefill + one decode step): TorchLens's structural nest expands to the hook counts of those steps
    probe_hooks = hook_counts(v1_model, lambda: v1_model.generate(**inputs, max_new_tokens=2))
    probe = expand(report.probe["loops"])
    assert probe.pop("<generate>") == 1  # the traced method is the root of the probe
    assert probe == +probe_hooks
    assert report.probe["traced_steps"] == 2 and report.probe["events_aligned"] > 0
    # config-free, the SAM stack's members still show the constructor parameter they differ in
    (blocks,) = find(report.probe["loops"], container="model.sam_model.blocks")
    windows = [l["window_size"] for l in blocks.lanes[: blocks.bound]]
    assert windows == [0 if i in v1_model.config.sam_global_attn_indexes else 14 for i in blocks.members]


def test_seed_fields_match_hooks(traced, v1_model):
    report, inputs = traced
    seed = report.probe["seed"]
    hooks = hook_counts(v1_model, lambda: v1_model.generate(**inputs, max_new_tokens=2))
    for address, n in hooks.items():
        if address:  # the root is called by generate, which the seed names as "" too
            assert seed["call_counts"].get(address, 0) == n, address
    assert seed["edges"]["model.sam_model->model.sam_model.blocks.0"] == 2
    assert "model.sam_model.blocks.0" in seed["module_children"]["model.sam_model.blocks"]


def test_report_json_is_stable_across_runs(traced, v1_model, tmp_path):
    report, inputs = traced
    again, _ = trace_session(v1_model, lambda: v1_model.generate(**inputs, max_new_tokens=NEW),
                             config="deepseek_ocr_v1", probe=probe_of(v1_model, inputs), check_versions=False)
    a = write_report(report, tmp_path / "a")
    b = write_report(again, tmp_path / "b")
    assert a["json"].read_bytes() == b["json"].read_bytes()
    assert a["text"].read_text() == b["text"].read_text()
    loaded = read_report(a["json"])
    assert expand(loaded.loops) == expand(report.loops)
    text = a["text"].read_text()
    assert "model.sam_model parfor 2 axis=view [view=local" in text
    assert "attention: window 14 at [0,2]; global at [1,3]" in text


def test_writer_refuses_an_inexact_report(traced, tmp_path):
    report, _ = traced
    broken = copy.deepcopy(report)
    (blocks,) = find(broken.loops, container="model.sam_model.blocks")
    blocks.members = blocks.members[:-1]
    with pytest.raises(ExactnessError, match=r"model.sam_model.blocks.3: observed 2 calls, report expands to 0"):
        write_report(broken, tmp_path)
    assert not (tmp_path / "report.json").exists()


def test_events_of_another_input_do_not_align(v1_model):
    a = gen_inputs(v1_model, (900, 1400))
    b = gen_inputs(v1_model, (1000, 800))
    from loopmeta.patches import instrument

    with instrument(v1_model, "deepseek_ocr_v1", check_versions=False) as rec:
        v1_model.generate(**a, max_new_tokens=2)
    with pytest.raises(AlignmentError) as err:
        probe_section(v1_model, probe_of(v1_model, b), load_config("deepseek_ocr_v1"), rec.events,
                      {e.address: e.stage for e in rec.events})
    assert "model.sam_model:1: input shapes [(6, 3, 640, 640)] in the events, [(4, 3, 640, 640)] in the trace" \
        in str(err.value)


def test_tampered_event_streams_are_refused(v1_sessions, v1_model):
    events = v1_sessions["gundam_2x3"]["recorder"].events
    config = load_config("deepseek_ocr_v1")
    kids = v1_sessions["gundam_2x3"]["recorder"].header.container_sizes
    session_report(events, config, model_class="m", container_sizes=kids, end=end_of(events))  # untouched: fine
    no_sam = [e for e in events if e.address != "model.sam_model" or e.call_index != 1]
    with pytest.raises(MergeError, match=r"event seq 2 is missing \(next is model.sam_model.blocks.0:1"):
        session_report(no_sam, config, model_class="m", container_sizes=kids, end=end_of(no_sam))
    expert = [e for e in events if e.role == "llm.moe.expert" and e.step == 2][0]
    no_expert = [e for e in events if e is not expert]
    with pytest.raises(MergeError, match="the stream lost a call"):
        session_report(no_expert, config, model_class="m", container_sizes=kids, end=end_of(no_expert))
    orphan = [copy.copy(e) for e in events]
    for e in orphan:
        if e.address == "model.sam_model.blocks.0" and e.call_index == 1:
            e.parent = ("model.sam_model", 9)
    with pytest.raises(MergeError, match="names parent model.sam_model:9, which has no event"):
        session_report(orphan, config, model_class="m", container_sizes=kids, end=end_of(orphan))
    wrong = [copy.copy(e) for e in events]
    block = next(e for e in wrong if e.address == "model.sam_model.blocks.0" and e.call_index == 2)
    block.call_index = 1
    with pytest.raises(MergeError, match=r"two events for model.sam_model.blocks.0:1"):
        session_report(wrong, config, model_class="m", container_sizes=kids, end=end_of(wrong))
    bad = [copy.copy(e) for e in events]
    layer = next(e for e in bad if e.role == "llm.layer")
    layer.lane = {**layer.lane, "extract_error": "model.layers.0:1: decoder_layer raised KeyError()"}
    with pytest.raises(MergeError, match="metadata extraction failed"):
        session_report(bad, config, model_class="m", container_sizes=kids, end=end_of(bad))


def test_tampered_count_is_caught_by_the_invariant(v1_sessions, v1_model):
    events = v1_sessions["base"]["recorder"].events
    report = session_report(events, load_config("deepseek_ocr_v1"), model_class="m", end=end_of(events),
                            container_sizes=v1_sessions["base"]["recorder"].header.container_sizes)
    observed = Counter(e.address for e in events)
    observed["lm_head"] += 1
    with pytest.raises(ExactnessError, match="lm_head: observed 3 calls, report expands to 2"):
        check_exact(report.loops, observed)


class Toy(torch.nn.Module):
    """A session whose third forward skips `b`: its decode step has another structure than the others."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x, past=0):
        self.calls += 1
        x = self.a(x)
        return x if self.calls == 3 else self.b(x)


TOY_CONFIG = """name = "toy"
root_classes = ["Toy"]
adapter = "toy"
stages = ["body"]
[[targets]]
role = "step"
pattern = ""
step = true
on_enter = "step"
[[targets]]
role = "a"
pattern = "a"
stage = "body"
[[targets]]
role = "b"
pattern = "b"
stage = "body"
"""


@pytest.fixture()
def toy_config(tmp_path):
    (tmp_path / "toy.py").write_text('def step(call):\n    past = call.arg("past")\n'
                                     '    return {"phase": "prefill" if past == 0 else "decode", "past_len": past}\n')
    (tmp_path / "toy.toml").write_text(TOY_CONFIG)
    return load_config(tmp_path / "toy.toml")


def toy_session(config, pasts):
    from loopmeta.patches import instrument

    toy, x = Toy(), torch.ones(1, 4)
    with instrument(toy, config) as rec:
        for past in pasts:
            toy(x, past)
    return rec


def test_report_of_a_decode_step_that_differs_is_refused(toy_config):
    rec = toy_session(toy_config, [0, 1, 2, 3])
    with pytest.raises(MergeError, match=r"decode steps \[2\] have another call structure than decode steps \[1, 3\]"):
        session_report(rec.events, toy_config, model_class="Toy", end=rec.end)


def test_a_second_generation_in_one_session_is_refused(toy_config):
    rec = toy_session(toy_config, [0, 1, 0, 1])
    with pytest.raises(MergeError, match="step 2 is a new prefill after decode steps"):
        session_report(rec.events, toy_config, model_class="Toy", end=rec.end)
    rec = toy_session(toy_config, [0, 0, 1])  # two prefills
    chunked = session_report(rec.events, toy_config, model_class="Toy", end=rec.end)
    assert [s["phase"] for s in chunked.steps] == ["prefill", "prefill", "decode"]


def test_json_lanes_carry_no_session_ids(traced):
    report, _ = traced
    text = json.dumps(report.to_dict())
    assert "session" not in text
    assert torch.__version__ not in text


def test_stage_view_reports_empty_stages(traced):
    report, _ = traced
    prefill, decode = report.stage_view
    assert (prefill["steps"], prefill["phase"], decode["steps"], decode["phase"]) == (
        [0], "prefill", list(range(1, NEW)), "decode")
    assert prefill["stages"]["vision.sam"] == "model.sam_model parfor 2 { model.sam_model.blocks[0..3] for 4 }"
    assert prefill["stages"]["vision.clip"].startswith("model.vision_model parfor 2 { model.vision_model.transformer")
    assert [decode["stages"][s] for s in ("vision.sam", "vision.clip", "projector")] == ["", "", ""]
    assert decode["stages"]["lm_head"] == "lm_head"
    assert "vision.sam: empty" in to_text(report)


def test_worked_example_at_real_depth():
    """The semantics worked example (Gundam, 1400x900: grid 3x2) on a real-depth stub, events only."""
    from stubs.deepseek_ocr_v1 import StubConfig, load_stub_model

    cfg = StubConfig.real_depth()
    model = load_stub_model(cfg)
    inputs = gen_inputs(model, (1400, 900))
    new = 3
    report, _ = trace_session(model, lambda: model.generate(**inputs, max_new_tokens=new), config="deepseek_ocr_v1",
                              check_versions=False)
    (blocks,) = find(report.loops, container="model.sam_model.blocks")
    assert (blocks.bound, [l["attention"] for l in blocks.lanes[:12]].count("global")) == (12, 4)
    assert [i for i, l in zip(blocks.members, blocks.lanes) if l["attention"] == "global"] == [2, 5, 8, 11]
    (clip,) = find(report.loops, container="model.vision_model.transformer.layers")
    assert clip.bound == 24
    assert [l.members for l in find(report.loops, container="model.layers", kind="for")] == [list(range(1, 12))] * 2
    (sam,) = find(report.loops, address="model.sam_model")
    assert [(l["view"], l["batch"], l.get("grid")) for l in sam.lanes] == [("local", 6, "3x2"), ("global", 1, None)]
    decode_select = find(report.loops, kind="select")[1]
    assert decode_select.container_size == 64 and {len(p) for p in decode_select.picks} == {6}
    counts = expand(report.loops)
    assert (counts["model.sam_model"], counts["model.sam_model.blocks.5"],
            counts["model.vision_model.transformer.layers.9"], counts["model.layers.7"], counts["lm_head"]) == (
        2, 2, 2, new, new)
    hits = sum(1 for r in report.moe["rows"] if r["address"] == "model.layers.3.mlp" and 17 in r["experts"])
    assert counts["model.layers.3.mlp.experts.17"] == hits


def test_report_rebuilt_from_a_saved_event_file(v1_sessions, v1_model, tmp_path):
    """Nothing is lost: the JSONL stream alone rebuilds the same loop nest (run_traced --from-events)."""
    from loopmeta import run_traced

    s = v1_sessions["gundam_2x3"]
    live = session_report(s["recorder"].events, load_config("deepseek_ocr_v1"), model_class="DeepseekOCRForCausalLM",
                          end=s["recorder"].end,
                          container_sizes=s["recorder"].header.container_sizes)
    assert run_traced.main(["--from-events", str(s["path"]), "--out", str(tmp_path)]) == 0
    rebuilt = read_report(tmp_path / "report.json")
    assert expand(rebuilt.loops) == expand(live.loops)
    assert rebuilt.moe == json.loads(json.dumps(live.moe))
    assert (tmp_path / "report.txt").read_text() == to_text(live) + "\n"  # "select k of M" keeps its M
    assert run_traced.main(["--from-events", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)]) == 2


def test_gemm_shapes_of_the_probed_steps(traced, v1_model):
    """lm_head is one GEMM per step: M = positions (the prompt in prefill, 1 in decode), N = vocab, K = hidden."""
    report, inputs = traced
    cfg = v1_model.config
    rows = [r for r in report.probe["gemms"] if r["node"] == "lm_head"]
    prompt = inputs["input_ids"].shape[1]
    assert [(r["step"], r["stage"], r["M"], r["N"], r["K"], r["calls"]) for r in rows] == [
        (0, "lm_head", prompt, cfg.vocab_size, cfg.hidden_size, 1), (1, "lm_head", 1, cfg.vocab_size, cfg.hidden_size, 1)]
    q = [r for r in report.probe["gemms"] if r["node"] == "model.layers.*.self_attn.q_proj"]
    assert [(r["step"], r["stage"], r["M"], r["calls"]) for r in q] == [
        (0, "llm", prompt, cfg.num_hidden_layers), (1, "llm", 1, cfg.num_hidden_layers)]
    assert {r["stage"] for r in report.probe["gemms"]} >= {"vision.sam", "vision.clip", "projector", "llm", "lm_head"}
    # routed experts: one GEMM per hit expert, M = its tokens; the token total per step is tokens x top_k
    ups = [r for r in report.probe["gemms"] if r["node"] == "model.layers.*.mlp.experts.*.up_proj"]
    for step, tokens in ((0, prompt), (1, 1)):
        moe_layers = cfg.num_hidden_layers - cfg.first_k_dense_replace
        assert sum(r["M"] * r["calls"] for r in ups if r["step"] == step) == tokens * cfg.num_experts_per_tok * moe_layers


def test_auto_probe_never_traces_more_steps_than_the_session(v1_model):
    inputs = gen_inputs(v1_model, (1000, 800))
    report, _ = trace_session(v1_model, lambda: v1_model.generate(**inputs, max_new_tokens=1), config="deepseek_ocr_v1",
                              probe="auto", check_versions=False)
    assert report.probe["traced_steps"] == 1 and [s["phase"] for s in report.steps] == ["prefill"]
    (root,) = report.loops
    assert (root.kind, root.address) == ("call", "")
    none, _ = trace_session(v1_model, lambda: v1_model(**{k: v for k, v in inputs.items() if k != "attention_mask"}),
                            config="deepseek_ocr_v1", probe="auto", check_versions=False)
    assert none.probe is None and "the session never called generate()" in none.notes[-1]


def test_moe_imbalance_counts_unused_experts():
    from loopmeta.events import CallEvent
    from loopmeta.report.moe import moe_table

    def moe(seq, hit, tokens):
        return CallEvent(session="s", seq=seq, step=0, phase="prefill", address="model.layers.1.mlp", class_name="M",
                         call_index=seq + 1, parent=None, role="llm.moe", stage="llm",
                         lane={"experts_hit": hit, "tokens_per_expert": tokens, "experts_total": 64})

    # two experts of 64 with equal load: the busiest has 32x the mean load over all 64 experts
    assert moe_table([moe(0, [3, 9], [5, 5])])["summary"]["imbalance"] == 32.0
    table = moe_table([moe(0, [3, 9], [6, 2]), moe(1, [3], [4])])
    assert table["summary"]["imbalance"] == round(10 / (12 / 64), 3)
    assert (table["summary"]["k_min"], table["summary"]["k_max"]) == (1, 2)
