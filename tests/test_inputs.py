"""What the report says about a step's inputs and about the order of its calls: the per-image split of a batch of
pages, the padding of a left-padded batch, and the rounds in which the vision tower and the projector alternate.

Expected values come from the real processor's outputs (`num_local_patches`, the image tokens in `input_ids`, the
attention mask) and from forward hooks that log the call order, never from the report itself.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TensorOps, needs_transformers5
from loopmeta.merge.loops import walk
from loopmeta.model_configs import load_config
from loopmeta.patches import instrument
from loopmeta.pipeline import trace_session, trace_structure
from loopmeta.report import session_report
from loopmeta.sessions.pages import synthetic_page
from loopmeta.writers import to_markdown, to_text
from loopmeta.writers.svg import to_dot

PAGES = [(1600, 1200), (800, 1600), (640, 480)]  # 6 crops, 2 crops, none


@pytest.fixture(scope="module")
def batch():
    """Three pages of different sizes, prompts of different lengths (the tokenizer pads on the left), generate(3)."""
    from loopmeta.builtin_models import deepseek_ocr2_tiny as tiny

    model = tiny.build_model("tiny")
    prompts = [tiny.DEFAULT_PROMPT + " the page text", tiny.DEFAULT_PROMPT, tiny.DEFAULT_PROMPT + " a"]
    inputs = tiny.build_processor()(images=[synthetic_page(w, h, seed=i) for i, (w, h) in enumerate(PAGES)],
                                    text=prompts, return_tensors="pt", padding=True)
    order: list[str] = []
    hooks = [model.get_submodule(a).register_forward_pre_hook(lambda m, args, a=a: order.append(a))
             for a in ("model.vision_tower", "model.multi_modal_projector")]
    try:
        report, _ = trace_session(model, lambda: model.generate(**inputs, max_new_tokens=3, do_sample=False))
    finally:
        for h in hooks:
            h.remove()
    return model, inputs, report, order


@needs_transformers5
def test_each_image_has_its_crops_and_tokens(batch):
    model, inputs, report, _ = batch
    image_id = model.config.image_token_id
    tokens = [int((row == image_id).sum()) for row in inputs["input_ids"]]  # image positions of each sample
    crops = inputs["num_local_patches"].tolist()
    assert crops == [6, 2, 0] and tokens == [256 + 144 * k + 1 for k in crops]
    assert report.steps[0]["images"] == [{"crops": k, "tokens": t} for k, t in zip(crops, tokens)]
    assert all("images" not in s for s in report.steps[1:])
    (tower,) = [l for l in walk(report.loops) if l.address == "model.vision_tower"]
    assert [lane["batch"] for lane in tower.lanes] == [len(PAGES), sum(crops)]  # the split is of this one call
    text = to_text(report)
    assert (f"step 0: 3 images: image 0: 6 crops + global view = {tokens[0]} image tokens; image 1: 2 crops + global "
            f"view = {tokens[1]} image tokens; image 2: global view only = {tokens[2]} image tokens; the crops ran as "
            "one batch of 6+2+0 = 8, split per image afterwards by a loop that calls no module") in text
    assert "images=" not in text  # worded once, never dumped as a lane


@needs_transformers5
def test_padding_is_counted_per_sample(batch):
    _, inputs, report, _ = batch
    mask = inputs["attention_mask"]
    real = mask.sum(dim=1).tolist()
    positions = mask.numel()
    assert len(set(real)) == 3 and max(real) == mask.shape[1]  # left-padded: the longest prompt has no padding
    assert report.steps[0]["real_tokens"] == real
    padded = positions - sum(real)
    line = (f"padding: {padded} of {positions} prefill positions ({100 * padded / positions:.1f}%) are padding (real "
            f"tokens per sample {'/'.join(map(str, real))}); every layer processes them: GEMM M (and MoE token counts, "
            "where there are experts) include them")
    assert line in to_text(report) and line in to_markdown(report)
    moe = next(l for l in walk(report.loops) if l.role == "llm.moe")
    assert moe.lanes[0]["tokens"] == positions  # the MoE call did route the padding positions


@needs_transformers5
def test_vision_tower_and_projector_alternate_in_rounds(batch):
    _, _, report, order = batch
    assert order == ["model.vision_tower", "model.multi_modal_projector"] * 2  # the hooks' own call order
    tower, projector = (next(l for l in report.loops if l.address == a) for a in order[:2])
    assert tower.rounds == projector.rounds == order[:2]
    lines = to_text(report).splitlines()
    header = lines.index("rounds over view: 2 rounds, each calls model.vision_tower, then "
                         "model.multi_modal_projector (calls alternate: round i runs iteration i of each)")
    assert lines[header + 1].startswith("  model.vision_tower parfor 2 axis=view")
    assert any(line.startswith("  model.multi_modal_projector parfor 2") for line in lines[header + 2:header + 8])


@needs_transformers5
def test_one_page_reads_no_attention_mask(batch):
    """The attention mask is read (one host copy) only at a prefill of more than one sample."""
    from loopmeta.builtin_models import deepseek_ocr2_tiny as tiny

    model, inputs, _, _ = batch
    one = tiny.prepare_inputs(tiny.build_processor(), synthetic_page(640, 480))

    def reads(inputs):
        """Host reads (plain, instrumented without the expert ledger), tensor ops equal, and the report's steps."""
        with TensorOps() as plain:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        with instrument(model, options={"expert_ledger": False}) as rec, TensorOps() as ops:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert [o for o in ops.ops if o != "host:tolist"] == [o for o in plain.ops if o != "host:tolist"]
        steps = session_report(rec.events, load_config("deepseek_ocr2_hf"), model_class="m", end=rec.end).steps
        return plain.ops.count("host:tolist"), ops.ops.count("host:tolist"), steps

    plain, instrumented, steps = reads(inputs)
    assert instrumented == plain + 1 and steps[0]["real_tokens"] == inputs["attention_mask"].sum(dim=1).tolist()
    plain, instrumented, steps = reads(one)
    assert instrumented == plain and "real_tokens" not in steps[0]


class _Pair(torch.nn.Module):
    def __init__(self, alternate: bool):
        super().__init__()
        self.a, self.b, self.alternate = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), alternate

    def forward(self, x):
        if self.alternate:
            return self.b(self.a(x)) + self.b(self.a(x))
        return self.b(self.b(self.a(self.a(x))))


@pytest.mark.parametrize("alternate", [True, False])
def test_rounds_only_where_the_calls_alternate(alternate):
    """Config-free, on TorchLens's call order: A B A B is two rounds; A A B B is two loops side by side."""
    model = _Pair(alternate)
    order: list[str] = []
    for name in ("a", "b"):
        getattr(model, name).register_forward_pre_hook(lambda m, args, name=name: order.append(name))
    report = trace_structure(model, (torch.randn(2, 4),))
    assert order == (["a", "b"] * 2 if alternate else ["a", "a", "b", "b"])
    loops = {l.address: l for l in report.loops[0].body}
    assert loops["a"].bound == loops["b"].bound == 2
    assert loops["a"].rounds == (["a", "b"] if alternate else [])
    assert ("rounds: 2 rounds, each calls a, then b" in to_text(report)) == alternate
    dot = to_dot(report)  # the drawing puts both parfors in one dotted box naming the rounds
    box, depth = "", 0  # the dotted box's own DOT text, up to its closing brace
    for char in dot[dot.find("_rounds {"):] if alternate else "":
        box += char
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "}" and depth == 0:
            break
    assert ("_rounds {" in dot) == alternate
    assert not alternate or ('label="rounds: 2 rounds' in box and "a parfor 2" in box and "b parfor 2" in box)


@needs_transformers5
def test_a_batch_of_pages_from_the_command_line(cli, tmp_path):
    """`--image` twice: one sample per page; the report's images and padding equal the processor's own outputs."""
    import json

    from loopmeta.builtin_models import deepseek_ocr2_tiny as tiny

    code, err = cli("--out", tmp_path, "--max-new-tokens", 2, "--no-torchlens", "--no-svg", "--no-html", "--no-trace",
                    "--image", "synthetic:1600x1200", "--image", "synthetic:640x480")
    assert code == 0, err
    inputs = tiny.build_processor()(images=[synthetic_page(1600, 1200), synthetic_page(640, 480)],
                                    text=[tiny.DEFAULT_PROMPT] * 2, padding=True, return_tensors="pt")
    prefill = json.loads((tmp_path / "report.json").read_text())["steps"][0]
    image_id = tiny.IMAGE_TOKEN_ID
    assert prefill["images"] == [{"crops": k, "tokens": int((row == image_id).sum())}
                                 for k, row in zip(inputs["num_local_patches"].tolist(), inputs["input_ids"])]
    assert prefill["real_tokens"] == inputs["attention_mask"].sum(dim=1).tolist()
    assert prefill["batch"] == 2 and prefill["seq_len"] == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("bad", ["synthetic:0x5", "synthetic:12", "synthetic:axb"])
def test_a_malformed_synthetic_page_is_refused(cli, tmp_path, bad):
    code, err = cli("--out", tmp_path, "--image", bad)
    assert code == 2 and "synthetic:WIDTHxHEIGHT" in err


@pytest.mark.parametrize("images", [("a.png", "b.png"), ((800, 600),)])
def test_infer_sessions_take_one_image_file(images, tmp_path):
    """The vendor's infer() reads one image file: a batch or a synthetic page is refused before anything loads."""
    from pathlib import Path

    from loopmeta.errors import SessionError
    from loopmeta.model_configs.deepseek_remote import infer_settings
    from loopmeta.sessions.contract import SessionRequest

    pages = tuple(tmp_path / p if isinstance(p, str) else p for p in images)
    for p in pages:
        if isinstance(p, Path):
            p.write_bytes(b"")
    for config in ("deepseek_ocr_v1", "deepseek_ocr2_remote"):
        with pytest.raises(SessionError, match="takes one image file"):
            infer_settings(SessionRequest(model="m", images=pages), load_config(config))
