"""Work accounting against independent counts: torch's FlopCounterMode (per op class and per stage), the
parameters of the modules forward hooks see called (`named_parameters()`), and a TorchLens trace of a later decode
step than the probe reached (the extrapolation must equal it exactly)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from loopmeta.probe.capture import capture
from loopmeta.work.formulas import op_work

# FlopCounterMode's aten ops per loopmeta op class
FLOP_CLASSES = {"mm": "matmul", "addmm": "matmul", "bmm": "matmul", "baddbmm": "matmul", "convolution": "conv"}


def counted(fn) -> tuple[dict[str, dict[str, int]], Counter]:
    """FlopCounterMode's counts per module and per loopmeta class (unknown aten ops fail the test)."""
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    per_module = {m: {str(op).rpartition(".")[2]: n for op, n in ops.items()} for m, ops in
                  counter.get_flop_counts().items()}
    classes: Counter = Counter()
    for op, n in per_module.get("Global", {}).items():
        assert op in FLOP_CLASSES, f"FlopCounterMode counted {op}, which this test does not map"
        classes[FLOP_CLASSES[op]] += n
    return per_module, classes


class Products(nn.Module):
    """One of every product form loopmeta counts, plus ops it counts in bytes only."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 24)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1)
        self.deconv = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.conv1 = nn.Conv1d(4, 6, 3)
        self.table = nn.Embedding(10, 16)

    def forward(self, x, img, ids, seq):
        h = self.proj(x + self.table(ids))                                       # linear on [2, 5, 16]
        a = torch.matmul(h.view(2, 1, 5, 24), h.new_ones(3, 24, 7))              # broadcast matmul
        b = torch.bmm(h, h.transpose(1, 2))                                      # bmm
        c = torch.baddbmm(b, h, h.transpose(1, 2))                               # baddbmm
        d = torch.einsum("bhwc,hkc->bhwk", a[:, :, :, :4].expand(2, 3, 5, 4).contiguous(), x.new_ones(3, 6, 4))
        e = torch.addmm(h.new_zeros(5, 7), h[0], h.new_ones(24, 7))              # addmm
        q = h.view(2, 5, 2, 12).transpose(1, 2)
        f = nn.functional.scaled_dot_product_attention(q, q, q)                  # attention
        g = self.deconv(self.conv(img))                                          # conv, transposed conv
        k = self.conv1(seq)
        return a.sum() + b.sum() + c.sum() + d.sum() + e.sum() + f.sum() + g.sum() + k.sum()


def test_every_product_form_matches_flop_counter():
    torch.manual_seed(0)
    model = Products().eval()
    args = (torch.randn(2, 5, 16), torch.randn(1, 3, 9, 9), torch.randint(0, 10, (2, 5)), torch.randn(1, 4, 11))
    tree = capture(model, args, model=model)
    ours: Counter = Counter()
    for op in tree.ops:
        work = op_work(op)
        assert work.flops is not None, op
        if work.flops:
            ours["matmul" if work.cls in ("matmul", "attention") else work.cls] += work.flops
    _, theirs = counted(lambda: model(*args))
    assert ours == theirs and ours["conv"] and ours["matmul"]
    embedding = [op_work(op) for op in tree.ops if op.func == "embedding"]
    assert [w.weights for w in embedding] == [(("table.weight", 2 * 5 * 16 * 4, False),)]  # the rows gathered


@pytest.fixture(scope="module")
def ocr2():
    pytest.importorskip("transformers.models.deepseek_ocr2")
    from loopmeta.builtin_models.deepseek_ocr2_tiny import build_model, build_processor, prepare_inputs
    from loopmeta.sessions.pages import synthetic_page

    processor = build_processor()
    return {"build": build_model, "inputs": lambda w, h: prepare_inputs(processor, synthetic_page(w, h))}


def forward_report(model, inputs):
    from loopmeta.pipeline import Probe, trace_session

    report, _ = trace_session(model, lambda: model(**inputs), probe=Probe(model, kwargs=dict(inputs)))
    return report


STAGE_MODULES = {"vision.sam": ["model.vision_tower.sam_encoder"], "vision.encoder": ["model.vision_tower.vision_encoder"],
                 "projector": ["model.multi_modal_projector"], "lm_head": ["lm_head"]}


@pytest.mark.real_model
def test_flops_per_stage_and_class_equal_flop_counter(ocr2):
    """Eager attention and eager experts: every product is one FlopCounterMode sees."""
    model = ocr2["build"]("tiny", attn_implementation="eager", experts_implementation="eager")
    inputs = ocr2["inputs"](1600, 1200)
    report = forward_report(model, inputs)
    per_module, classes = counted(lambda: model(**inputs))
    ours: Counter = Counter()
    for row in report.work["classes"]:
        if row["flops"]:
            ours[row["class"]] += row["flops"]
    assert ours == classes
    root = type(model).__name__
    layers = [f"model.language_model.layers.{i}" for i in range(model.config.text_config.num_hidden_layers)]
    for stage, modules in {**STAGE_MODULES, "llm": layers}.items():
        theirs = sum(sum(per_module.get(f"{root}.{m}", {}).values()) for m in modules)
        mine = sum(r["flops"] for r in report.work["stages"] if r["stage"] == stage)
        assert mine == theirs > 0, stage


@pytest.mark.real_model
def test_grouped_mm_experts_equal_eager_experts(ocr2):
    """FlopCounterMode misses `grouped_mm`; loopmeta counts it as the eager loop over the same routing."""
    inputs = ocr2["inputs"](640, 480)
    stages = {}
    for impl in ("grouped_mm", "eager"):
        report = forward_report(ocr2["build"]("tiny", experts_implementation=impl), inputs)
        stages[impl] = {r["stage"]: r["flops"] for r in report.work["stages"]}
        if impl == "grouped_mm":
            assert any(r["class"] == "grouped_matmul" and r["flops"] for r in report.work["classes"])
    assert stages["grouped_mm"] == stages["eager"]
    model = ocr2["build"]("tiny", experts_implementation="grouped_mm")
    _, missed = counted(lambda: model(**inputs))
    assert sum(missed.values()) < sum(stages["eager"].values())  # the undercount the report warns about


@pytest.mark.real_model
@pytest.mark.parametrize("impl", ["grouped_mm", "eager"])
def test_weight_bytes_equal_parameters_of_called_modules(ocr2, impl):
    model = ocr2["build"]("tiny", experts_implementation=impl)
    inputs = ocr2["inputs"](640, 480)
    report = forward_report(model, inputs)
    calls: Counter = Counter()
    hits: dict[str, int] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, a=a: calls.update([a])) for a, m in model.named_modules()]
    handles += [m.register_forward_pre_hook(lambda mod, args, a=a: hits.__setitem__(a, len(args[1].unique())))
                for a, m in model.named_modules() if a.endswith("mlp.experts")]
    with torch.no_grad():
        model(**inputs)
    for h in handles:
        h.remove()
    expected = 0
    for address, module in model.named_modules():
        own = {n: p for n, p in module.named_parameters(recurse=False)}
        if not calls[address] or not own:
            continue
        if isinstance(module, nn.Embedding):  # a lookup reads the rows it gathers
            expected += calls[address] * inputs["input_ids"].numel() * module.weight[0].nbytes
        elif address in hits:  # stacked experts: only those the router chose
            expected += sum(p.nbytes // p.shape[0] * hits[address] for p in own.values())
        else:
            expected += calls[address] * sum(p.nbytes for p in own.values())
    # learned queries the vision tower reads by attribute (their module is never called): the global view's
    expected += model.model.vision_tower.query_1024_resolution.weight.nbytes
    assert report.work["total"]["weight_bytes"] == expected


@pytest.mark.real_model
def test_derived_decode_steps_equal_a_trace_of_those_steps(ocr2):
    """Steps 3..5 come from the probe of steps 0..3; a TorchLens trace of all six steps gives the same work."""
    from loopmeta.pipeline import trace_session
    from loopmeta.work.account import session_work
    from loopmeta.work.steps import place_ops

    model = ocr2["build"]("tiny")
    inputs = ocr2["inputs"](640, 480)
    report, _ = trace_session(model, lambda: model.generate(**inputs, max_new_tokens=6, do_sample=False), probe="auto")
    phases = {s["step"]: s["phase"] for s in report.steps}
    assert report.work["probed_steps"] == [0, 1, 2] and report.work["derived_steps"] == [3, 5]
    assert not report.work["notes"]
    stage_of = _stages(model)
    ids = inputs["input_ids"]
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    full = capture(model.generate, (ids,), {**rest, "max_new_tokens": 6, "do_sample": False}, model=model)
    traced = session_work(place_ops(full, stage_of, ""), phases, report.moe)
    assert traced.probed == list(range(6))
    rows = [r for r in report.work["step_stage"]["rows"] if r[0] >= 3]
    mine = {(r[0], r[1]): r[2:] for r in rows}
    theirs = {(step, stage): [sum(v[i] for (s, _), v in traced.totals[step].items() if s == stage) for i in range(5)]
              for step in range(3, 6) for stage in {s for s, _ in traced.totals[step]}}
    assert mine == theirs
    kv = [mine[(step, "llm")][3] for step in (3, 4, 5)]
    assert kv[1] - kv[0] == kv[2] - kv[1] > 0  # one more cached token read per layer and step


@pytest.mark.real_model
def test_eager_attention_reads_the_same_cache_as_sdpa(ocr2):
    """Eager attention reads the cache through two products (`q @ k^T`, `p @ v`): found by their operand growing one
    key per decode step, their KV bytes equal those of SDPA on the same model, step by step, derived steps too. With
    one decode step traced nothing can be seen to grow, and the report says so."""
    from loopmeta.pipeline import trace_session

    inputs = ocr2["inputs"](640, 480)
    kv = {}
    for impl in ("sdpa", "eager"):
        model = ocr2["build"]("tiny", attn_implementation=impl)
        report, _ = trace_session(model, lambda: model.generate(**inputs, max_new_tokens=6, do_sample=False),
                                  probe="auto")
        assert report.work["derived_steps"] == [3, 5] and not report.work["notes"]
        kv[impl] = [(r[0], r[1], r[5], r[6]) for r in report.work["step_stage"]["rows"] if r[5] or r[6]]
    assert kv["eager"] == kv["sdpa"] and {step for step, *_ in kv["sdpa"]} == set(range(6))
    report, _ = trace_session(model, lambda: model.generate(**inputs, max_new_tokens=2, do_sample=False),
                              probe="auto")
    assert report.work["total"]["kv_read_bytes"] == 0
    assert any("no KV-cache bytes identified" in n for n in report.work["notes"])


def _stages(model) -> dict[str, str]:
    """Instrumented address -> stage, from the config the session used."""
    from loopmeta.patches.instrumentation import choose_config, resolve

    return {b.address: b.target.stage for b in resolve(model, choose_config(model, "auto"))}


def test_v1_stub_session_flops_equal_flop_counter_over_every_step(v1_model):
    """The v1 stub (experts as modules): the whole session's FLOPs, derived decode steps included, equal
    FlopCounterMode over the same generation; per stage too."""
    from stubs.deepseek_ocr_v1 import MODES

    from loopmeta.pipeline import trace_session

    inputs = v1_model.prepare_infer_inputs(image_size=(900, 1400), **MODES["gundam"])
    inputs.pop("plan")
    run = lambda: v1_model.generate(**inputs, max_new_tokens=6)  # noqa: E731
    report, _ = trace_session(v1_model, run, config="deepseek_ocr_v1", probe="auto", check_versions=False)
    assert report.work["derived_steps"] == [3, 5] and not report.work["notes"]
    assert report.work["total"]["kv_read_bytes"] > 0  # its eager attention's cache reads are found
    per_module, classes = counted(run)
    assert report.work["total"]["flops"] == sum(classes.values()) > 0
    root = type(v1_model).__name__
    for stage, module in {"vision.sam": "model.sam_model", "projector": "model.projector"}.items():
        mine = sum(r["flops"] for r in report.work["stages"] if r["stage"] == stage)
        assert mine == sum(per_module[f"{root}.{module}"].values()) > 0, stage


@pytest.mark.real_model
def test_without_the_ledger_only_stacked_experts_are_named_as_counted_whole(ocr2):
    """With the expert ledger off, loopmeta cannot know which experts were hit: it counts the stacked expert weights
    whole and names exactly them (not the 4-D convolution weights, which are no experts)."""
    from loopmeta.pipeline import Probe, trace_session

    model = ocr2["build"]("tiny")
    inputs = ocr2["inputs"](640, 480)
    report, _ = trace_session(model, lambda: model(**inputs), probe=Probe(model, kwargs=dict(inputs)),
                              options={"expert_ledger": False})
    stacked = sorted(n for n, p in model.named_parameters() if p.dim() == 3 and ".mlp.experts." in n)
    (note,) = [n for n in report.work["notes"] if "counted whole" in n]
    assert note.rpartition(": ")[2].split(", ") == stacked
