"""Real-code checks of the offline random-weight DeepSeek-OCR 2 session (``builtin_models/deepseek_ocr2_tiny.py``).

Runs transformers' native ``deepseek_ocr2`` (transformers >= 5) with plain PyTorch forward hooks:
crop plans against the real processor, vision-tower calls per forward, image-token counts, and the number of
root forwards in ``generate``. Seconds on CPU.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "transformers.models.deepseek_ocr2",
    reason="transformers without the native deepseek_ocr2 model (needs transformers >= 5; 4.46.3 lacks it)",
)
pytest.importorskip("PIL", reason="pillow is needed for the synthetic pages")
pytest.importorskip("tokenizers", reason="tokenizers is needed for the offline tokenizer")

import torch  # noqa: E402

from loopmeta.builtin_models import deepseek_ocr2_tiny as tiny  # noqa: E402
from loopmeta.sessions.pages import synthetic_page  # noqa: E402
from oracles.ocr2_crops import expected_crops  # noqa: E402

pytestmark = pytest.mark.real_model

# (width, height) -> expected (cols, rows, K): two different crop counts and one without crops.
SIZES = {
    (1600, 1200): (3, 2, 6),
    (1000, 500): (2, 1, 2),
    (640, 480): (0, 0, 0),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared, loaded CPU the multi-threaded SDPA/conv kernels of the vision tower
    become several times slower and erratic; single-threaded they take ~1 s per 6-crop forward."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def processor():
    return tiny.build_processor()


@pytest.fixture(scope="module")
def model():
    return tiny.build_model("tiny", seed=0)


@pytest.fixture(scope="module")
def inputs_by_size(processor):
    return {wh: tiny.prepare_inputs(processor, synthetic_page(*wh, seed=1)) for wh in SIZES}


class _Calls:
    """Plain forward pre-hooks recording (name, first positional tensor shape, kwargs names) in call order."""

    def __init__(self, model, names):
        self.events = []
        self._handles = []
        modules = dict(model.named_modules())
        for name in names:
            self._handles.append(
                modules[name].register_forward_pre_hook(self._hook(name or "<root>"), with_kwargs=True)
            )

    def _hook(self, name):
        def hook(module, args, kwargs):
            shape = tuple(args[0].shape) if args and torch.is_tensor(args[0]) else None
            self.events.append((name, shape, kwargs))

        return hook

    def names(self):
        return [e[0] for e in self.events]

    def remove(self):
        for h in self._handles:
            h.remove()


# ---------------------------------------------------------------------------------------------------------
# Crop plan: independent rule vs the real processor
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wh", list(SIZES))
def test_expected_crops_matches_processor(wh, inputs_by_size):
    cols, rows, k = SIZES[wh]
    plan = expected_crops(*wh)
    assert (plan.cols, plan.rows, plan.num_crops) == (cols, rows, k)
    assert plan.image_tokens == 256 + 144 * k + 1

    inputs = inputs_by_size[wh]
    # The per-image crop counts live in `num_local_patches` (shape (B,)); the crops themselves, flattened over
    # the batch, in `pixel_values_local` (absent when no image has crops).
    assert inputs["num_local_patches"].tolist() == [k]
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 1024, 1024)
    if k:
        assert tuple(inputs["pixel_values_local"].shape) == (k, 3, 768, 768)
    else:
        assert "pixel_values_local" not in inputs
    n_image_tokens = int((inputs["input_ids"] == tiny.IMAGE_TOKEN_ID).sum())
    assert n_image_tokens == plan.image_tokens == 256 + 144 * k + 1


@pytest.mark.parametrize(
    "wh",
    [(1250, 1000), (2000, 1600), (800, 2000), (769, 100), (1105, 2652), (1024, 1024), (768, 700), (3000, 900)],
)
def test_expected_crops_more_sizes_processor_only(wh, processor):
    """Exact ties (1250x1000: 2x2 vs 3x2 below the area threshold; 2000x1600: above it), tall, extreme,
    a float-only tie (1105x2652) and the 768 threshold, against the image processor alone."""
    plan = expected_crops(*wh)
    out = processor.image_processor(synthetic_page(*wh), return_tensors="pt")
    assert out["num_local_patches"].tolist() == [plan.num_crops]
    if plan.num_crops:
        assert out["pixel_values_local"].shape[0] == plan.num_crops


# ---------------------------------------------------------------------------------------------------------
# Module calls of a plain forward
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wh", list(SIZES))
def test_vision_tower_calls_per_forward(wh, model, inputs_by_size):
    _, _, k = SIZES[wh]
    inputs = inputs_by_size[wh]
    calls = _Calls(model, ["", "model.vision_tower", "model.multi_modal_projector", "lm_head"])
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        calls.remove()

    vt = [e for e in calls.events if e[0] == "model.vision_tower"]
    assert len(vt) == 1 + (k > 0)
    assert vt[0][1] == (1, 3, 1024, 1024)  # global views first, batch B
    if k:
        assert vt[1][1] == (k, 3, 768, 768)  # then all crops, batch K
    assert calls.names().count("model.multi_modal_projector") == len(vt)
    # everything runs inside the root forward, which receives pixel_values
    assert calls.names()[0] == "<root>" and calls.names().count("<root>") == 1
    assert calls.events[0][2].get("pixel_values") is not None

    seq = inputs["input_ids"].shape[1]
    assert seq == 256 + 144 * k + 1 + 4  # image tokens + "<s>" + "Free OCR ."
    assert tuple(out.logits.shape) == (1, seq, model.config.text_config.vocab_size)


# ---------------------------------------------------------------------------------------------------------
# generate: N root forwards; vision computed before the first one
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wh", [(1000, 500)])
def test_generate_three_root_forwards(wh, model, inputs_by_size):
    _, _, k = SIZES[wh]
    inputs = inputs_by_size[wh]
    calls = _Calls(model, ["", "model.vision_tower", "lm_head"])
    try:
        with torch.no_grad():
            # min_new_tokens keeps a random-weight model from stopping early on EOS
            generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        calls.remove()

    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    names = calls.names()
    assert names.count("<root>") == 3
    assert names.count("lm_head") == 3
    # The image features are computed once by generate() before (outside) the first root forward ...
    first_root = names.index("<root>")
    assert names[:first_root] == ["model.vision_tower"] * (1 + (k > 0))
    assert names.count("model.vision_tower") == 1 + (k > 0)
    # ... so the prefill gets precomputed features instead of pixels, and decode steps get 1 token.
    roots = [e for e in calls.events if e[0] == "<root>"]
    assert roots[0][2].get("pixel_values") is None
    assert roots[0][2].get("mm_encoder_outputs") is not None
    assert tuple(roots[0][2]["input_ids"].shape) == tuple(inputs["input_ids"].shape)
    assert [tuple(r[2]["input_ids"].shape) for r in roots[1:]] == [(1, 1), (1, 1)]
    assert [e[1] for e in calls.events if e[0] == "lm_head"] == [(1, 1, 64)] * 3  # generate keeps 1 logit


def test_seeded_build_is_deterministic():
    a = tiny.build_model("tiny", seed=3).state_dict()
    b = tiny.build_model("tiny", seed=3).state_dict()
    c = tiny.build_model("tiny", seed=4).state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_tokenizer_fits_tiny_vocab(processor):
    assert tiny.TOKENIZER_VOCAB_SIZE <= tiny.tiny_config("tiny").text_config.vocab_size
    assert processor.image_token_id == tiny.IMAGE_TOKEN_ID == tiny.tiny_config("tiny").image_token_id


def test_the_full_size_has_the_vendor_shapes():
    """The shapes of the real model (docs/models/deepseek-ocr2-transformers.md), built on the meta device."""
    params = dict(tiny.build_model("full", device="meta", dtype=torch.bfloat16).named_parameters())
    expected = {
        "model.vision_tower.sam_encoder.patch_embed.projection.weight": (768, 3, 16, 16),  # SAM ViT-B, patch 16
        "model.vision_tower.sam_encoder.layers.11.mlp.lin1.weight": (3072, 768),
        "model.vision_tower.vision_encoder.layers.23.mlp.gate_proj.weight": (4864, 896),  # Qwen2-0.5B-like
        "model.multi_modal_projector.weight": (1280, 896),
        "model.language_model.layers.0.mlp.gate_proj.weight": (6848, 1280),  # the dense layer
        "model.language_model.layers.11.mlp.experts.down_proj": (64, 1280, 896),  # 64 experts 896 wide
        "model.language_model.layers.11.mlp.shared_experts.up_proj.weight": (1792, 1280),  # 2 shared experts
        "lm_head.weight": (129280, 1280),
    }
    assert {name: tuple(params[name].shape) for name in expected} == expected
    assert not any(name.startswith("model.language_model.layers.12.") for name in params)
