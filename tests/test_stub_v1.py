"""Checks of the stubbed DeepSeek-OCR v1 model itself (tests/stubs/deepseek_ocr_v1), with plain forward hooks.

Expected values come from docs/models/deepseek-ocr-v1.md (token counts, crop grids, call structure) and from
the stub config, never from loopmeta. The stub is imported only through ``load_stub_model`` (dynamic package).
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

import pytest
import torch

from stubs.deepseek_ocr_v1 import MODES, PACKAGE_PREFIX, StubConfig, load_stub_model, load_stub_modules

GUNDAM = MODES["gundam"]
PROMPT_TAIL = len("\nFree OCR. ")  # char-level stub tokenizer: one id per character after <image>


class CallLog:
    """Records every module call (forward hook, so in exit order) with the root-forward step it belongs to."""

    def __init__(self, model):
        self.model = model
        self.step = -1
        self.calls = []  # (name, step, args, kwargs, output)
        self.root_pre = []  # (kwargs, past_len at entry)
        self.handles = [model.register_forward_pre_hook(self._root_pre, with_kwargs=True)]
        for name, mod in model.named_modules():
            self.handles.append(mod.register_forward_hook(self._make_hook(name or "<root>"), with_kwargs=True))

    def _root_pre(self, mod, args, kwargs):
        self.step += 1
        pkv = kwargs.get("past_key_values")
        self.root_pre.append((dict(kwargs), pkv.get_seq_length() if pkv is not None else None))

    def _make_hook(self, name):
        def hook(mod, args, kwargs, output):
            self.calls.append((name, self.step, args, kwargs, output))
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    def of(self, name):
        return [c for c in self.calls if c[0] == name]

    def count(self, name):
        return len(self.of(name))

    def in_shapes(self, name):
        return [tuple(c[2][0].shape) for c in self.of(name)]

    def out_shapes(self, name):
        return [tuple(c[4].shape) for c in self.of(name)]


@pytest.fixture(scope="module")
def model():
    return load_stub_model()


@pytest.fixture(scope="module")
def mods():
    return load_stub_modules()


# ---------------------------------------------------------------------------------------------------------------
# plain functions: crop grid and image positions
# ---------------------------------------------------------------------------------------------------------------
def _reference_grid(width, height):
    """Independent restatement of the rule in the facts file."""
    grids = []
    for n in range(2, 10):
        for w in range(1, 10):
            for h in range(1, 10):
                if w * h == n:
                    grids.append((w, h))
    best, best_diff = None, None
    for w, h in grids:  # increasing w*h
        diff = abs(width / height - w / h)
        if best is None or diff < best_diff:
            best, best_diff = (w, h), diff
        elif diff == best_diff and width * height > 0.5 * 640 * 640 * w * h:
            best = (w, h)
    return best


def test_crop_grid_examples(mods):
    m = mods.modeling_deepseekocr
    assert m.choose_crop_grid(1400, 900) == (3, 2)
    assert m.choose_crop_grid(900, 1400) == (2, 3)
    assert m.choose_crop_grid(1000, 1000) == (2, 2)
    assert m.choose_crop_grid(2000, 1000) == (4, 2)
    assert m.choose_crop_grid(1280, 640) == (2, 1)
    for w in range(641, 3000, 97):
        for h in range(300, 3000, 89):
            assert m.choose_crop_grid(w, h) == _reference_grid(w, h), (w, h)


def test_image_positions_per_mode(mods):
    m = mods.modeling_deepseekocr
    assert m.image_positions(1400, 900, **GUNDAM) == 893
    assert m.image_positions(1400, 900, **GUNDAM) == 273 + (10 * 3 + 1) * (10 * 2)
    assert m.image_positions(900, 1400, **GUNDAM) == 273 + (10 * 2 + 1) * (10 * 3)
    assert m.image_positions(600, 640, **GUNDAM) == 273  # both sides <= 640: no crops
    expected = {"tiny": 73, "small": 111, "base": 273, "large": 421}
    for mode, n in expected.items():
        assert m.image_positions(1400, 900, **MODES[mode]) == n, mode


def test_infer_inputs_gundam_1400x900(model):
    inp = model.prepare_infer_inputs(image_size=(1400, 900), **GUNDAM)
    assert inp["images_spatial_crop"].tolist() == [[3, 2]]
    assert inp["images_spatial_crop"].dtype == torch.long and inp["images_spatial_crop"].device.type == "cpu"
    patches, ori = inp["images"][0]
    assert tuple(patches.shape) == (6, 3, 640, 640) and tuple(ori.shape) == (1, 3, 1024, 1024)
    assert torch.sum(patches).item() != 0 and torch.sum(ori).item() != 0
    assert int(inp["images_seq_mask"].sum()) == 893
    assert inp["input_ids"].shape == (1, 1 + 893 + PROMPT_TAIL)
    assert inp["input_ids"][0, 0].item() == model.config.bos_token_id
    assert inp["images_seq_mask"][0, 1:894].all() and not inp["images_seq_mask"][0, 0]


# ---------------------------------------------------------------------------------------------------------------
# loader and module tree
# ---------------------------------------------------------------------------------------------------------------
def test_loader_uses_dynamic_package(model):
    mod_name = type(model).__module__
    assert mod_name.startswith(PACKAGE_PREFIX + ".") and mod_name.endswith(".modeling_deepseekocr")
    package = mod_name.rsplit(".", 1)[0]
    assert type(model.model.sam_model).__module__ == package + ".deepencoder"
    assert type(model.model.layers[0]).__module__ == package + ".modeling_deepseekv2"
    assert sys.modules[mod_name].__package__ == package
    for parent in ("transformers_modules", "transformers_modules.deepseek_ai", PACKAGE_PREFIX, package):
        assert parent in sys.modules
    assert not any(k.startswith("stubs.deepseek_ocr_v1.") for k in sys.modules)
    other = load_stub_model(fresh=True)
    assert type(other).__module__ != mod_name and type(other) is not type(model)
    assert type(other).__name__ == "DeepseekOCRForCausalLM"


def test_module_tree(model, mods):
    cfg = model.config
    mm = dict(model.named_modules())
    names = {
        "model": "DeepseekOCRModel",
        "model.embed_tokens": "Embedding",
        "model.norm": "DeepseekV2RMSNorm",
        "lm_head": "Linear",
        "model.sam_model": "ImageEncoderViT",
        "model.sam_model.patch_embed": "PatchEmbed",
        "model.sam_model.patch_embed.proj": "Conv2d",
        "model.sam_model.blocks.0.attn": "Attention",
        "model.sam_model.blocks.0.mlp": "MLPBlock",
        "model.sam_model.blocks.0.mlp.act": "GELU",
        "model.sam_model.net_2": "Conv2d",
        "model.sam_model.net_3": "Conv2d",
        "model.vision_model": "VitModel",
        "model.vision_model.embeddings.patch_embedding": "Conv2d",
        "model.vision_model.pre_layrnorm": "LayerNorm",
        "model.vision_model.transformer": "NoTPTransformer",
        "model.vision_model.transformer.layers.0": "NoTPTransformerBlock",
        "model.vision_model.transformer.layers.0.self_attn": "NoTPAttention",
        "model.vision_model.transformer.layers.0.mlp": "NoTPFeedForward",
        "model.projector": "MlpProjector",
        "model.projector.layers": "Linear",
        "model.layers.0": "DeepseekV2DecoderLayer",
        "model.layers.0.self_attn": "LlamaAttention",
        "model.layers.0.self_attn.rotary_emb": "LlamaRotaryEmbedding",
        "model.layers.0.input_layernorm": "DeepseekV2RMSNorm",
        "model.layers.0.post_attention_layernorm": "DeepseekV2RMSNorm",
        "model.layers.0.mlp": "DeepseekV2MLP",
        "model.layers.1.mlp": "DeepseekV2MoE",
        "model.layers.1.mlp.gate": "MoEGate",
        "model.layers.1.mlp.experts.0": "DeepseekV2MLP",
        "model.layers.1.mlp.shared_experts": "DeepseekV2MLP",
    }
    for addr, cls in names.items():
        assert type(mm[addr]).__name__ == cls, addr
    assert isinstance(model.model, mods.modeling_deepseekv2.DeepseekV2Model)
    for sub in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.lin1", "mlp.lin2"):
        assert f"model.sam_model.blocks.0.{sub}" in mm
    for sub in ("layer_norm1", "self_attn.qkv_proj", "self_attn.out_proj", "layer_norm2", "mlp.fc1", "mlp.fc2"):
        assert f"model.vision_model.transformer.layers.0.{sub}" in mm
    assert [f"model.sam_model.neck.{i}" in mm for i in range(4)] == [True] * 4
    assert [b.window_size for b in model.model.sam_model.blocks] == [14, 0, 14, 0]
    assert len(model.model.vision_model.transformer.layers) == cfg.clip_layers == 2
    assert len(model.model.layers) == 3 and len(model.model.layers[2].mlp.experts) == 8
    params = dict(model.named_parameters())
    assert params["model.image_newline"].shape == (cfg.hidden_size,)
    assert params["model.view_seperator"].shape == (cfg.hidden_size,)
    assert "model.sam_model.pos_embed" in params
    assert isinstance(mods.deepencoder.quick_gelu, torch.jit.ScriptFunction)
    assert model.training is False


def test_real_depth_tree():
    m = load_stub_model(StubConfig.real_depth())
    ws = [b.window_size for b in m.model.sam_model.blocks]
    assert ws == [0 if i in (2, 5, 8, 11) else 14 for i in range(12)]
    assert len(m.model.vision_model.transformer.layers) == 24
    assert len(m.model.layers) == 12
    assert type(m.model.layers[0].mlp).__name__ == "DeepseekV2MLP"
    assert all(type(m.model.layers[i].mlp).__name__ == "DeepseekV2MoE" for i in range(1, 12))
    assert len(m.model.layers[5].mlp.experts) == 64 and m.model.layers[5].mlp.gate.top_k == 6


def test_quick_gelu_looked_up_at_call_time(model, mods):
    de = mods.deepencoder
    original = de.quick_gelu
    calls = []

    def plain_quick_gelu(x):
        calls.append(tuple(x.shape))
        return x * torch.sigmoid(1.702 * x)

    cfg = model.config
    patch_embeds = torch.randn(2, cfg.clip_width, 4, 4)
    with torch.no_grad():
        ref = model.model.vision_model(None, patch_embeds)
        de.quick_gelu = plain_quick_gelu
        try:
            out = model.model.vision_model(None, patch_embeds)
        finally:
            de.quick_gelu = original
    assert len(calls) == cfg.clip_layers
    assert out.shape == (2, 17, cfg.clip_width)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# call structure
# ---------------------------------------------------------------------------------------------------------------
def test_gundam_2x3_vision_calls(model):
    cfg = model.config
    with CallLog(model) as log:
        seqs = model.infer_synthetic(image_size=(900, 1400), max_new_tokens=2, **GUNDAM)
    assert seqs.shape[1] == 1 + 903 + PROMPT_TAIL + 2
    assert log.count("<root>") == 2

    sam = "model.sam_model"
    assert log.in_shapes(sam) == [(6, 3, 640, 640), (1, 3, 1024, 1024)]  # local first, then global
    assert log.out_shapes(sam) == [(6, cfg.clip_width, 10, 10), (1, cfg.clip_width, 16, 16)]
    assert all(c[1] == 0 for c in log.of(sam))
    for i in range(cfg.sam_depth):
        assert log.count(f"{sam}.blocks.{i}") == 2
        assert log.in_shapes(f"{sam}.blocks.{i}") == [(6, 40, 40, cfg.sam_width), (1, 64, 64, cfg.sam_width)]
    # windows are folded into the batch: one attn call per block call
    assert log.in_shapes(f"{sam}.blocks.0.attn") == [(6 * 9, 14, 14, cfg.sam_width), (25, 14, 14, cfg.sam_width)]
    assert log.in_shapes(f"{sam}.blocks.1.attn") == [(6, 40, 40, cfg.sam_width), (1, 64, 64, cfg.sam_width)]
    for i in range(4):
        assert log.count(f"{sam}.neck.{i}") == 2

    vm = "model.vision_model"
    assert log.count(vm) == 2 and log.count(f"{vm}.transformer") == 2
    assert log.out_shapes(vm) == [(6, 101, cfg.clip_width), (1, 257, cfg.clip_width)]
    for j in range(cfg.clip_layers):
        assert log.count(f"{vm}.transformer.layers.{j}") == 2
    assert log.count(f"{vm}.embeddings.patch_embedding") == 0
    assert log.count(f"{vm}.embeddings") == 2

    assert log.count("model.projector") == 2
    assert log.in_shapes("model.projector") == [(6, 100, 2 * cfg.clip_width), (1, 256, 2 * cfg.clip_width)]
    assert log.out_shapes("model.projector") == [(6, 100, cfg.hidden_size), (1, 256, cfg.hidden_size)]

    # exit order: each view's sam -> vision_model -> projector completes before the next view starts
    order = [c[0] for c in log.calls if c[0] in (sam, vm, "model.projector")]
    assert order == [sam, vm, "model.projector"] * 2

    # the assembled features landed at the image positions: separator last, one newline per row
    h0 = log.of("model.layers.0")[0][2][0][0]  # prefill input of layer 0 = inputs_embeds
    img = h0[1:1 + 903]
    mm = model.model
    assert torch.equal(img[-1], mm.view_seperator.detach())
    newline_rows = (img == mm.image_newline.detach()).all(-1).sum().item()
    assert newline_rows == 16 + 10 * 3


def test_base_mode_single_view(model):
    with CallLog(model) as log:
        model.infer_synthetic(image_size=(1000, 800), max_new_tokens=1, **MODES["base"])
    assert log.in_shapes("model.sam_model") == [(1, 3, 1024, 1024)]
    assert log.count("model.vision_model") == 1
    assert log.out_shapes("model.projector") == [(1, 256, model.config.hidden_size)]
    for i in range(model.config.sam_depth):
        assert log.count(f"model.sam_model.blocks.{i}") == 1
    kwargs = log.root_pre[0][0]
    assert int(kwargs["images_seq_mask"].sum()) == 273
    assert kwargs["images_spatial_crop"].tolist() == [[1, 1]]


def test_text_only_never_runs_vision(model):
    with CallLog(model) as log:
        seqs = model.infer_synthetic(image_size=None, max_new_tokens=3)
    for name in ("model.sam_model", "model.vision_model", "model.projector"):
        assert log.count(name) == 0
    assert log.count("<root>") == 3 and log.count("lm_head") == 3
    assert seqs.shape[1] == 1 + PROMPT_TAIL + 3  # the <image> tag adds no positions without an image


def test_generate_steps_kwargs_and_cache(model):
    cfg = model.config
    T = 4
    inp = model.prepare_infer_inputs(image_size=(600, 500), **MODES["small"])
    inp.pop("plan")
    S = inp["input_ids"].shape[1]
    assert S == 1 + 111 + PROMPT_TAIL
    with CallLog(model) as log:
        seqs = model.generate(**inp, max_new_tokens=T)
    assert seqs.shape == (1, S + T)
    assert log.count("<root>") == T and log.count("model") == T and log.count("lm_head") == T
    assert [c[1] for c in log.of("model.sam_model")] == [0]
    assert log.count("model.vision_model") == 1 and log.count("model.projector") == 1
    assert log.in_shapes("lm_head") == [(1, S, cfg.hidden_size)] + [(1, 1, cfg.hidden_size)] * (T - 1)
    for name, _, _, _, out in log.of("<root>"):
        assert torch.isfinite(out.logits).all()
    for i in range(cfg.num_hidden_layers):
        assert log.count(f"model.layers.{i}") == T
        assert log.count(f"model.layers.{i}.self_attn.rotary_emb") == T
    assert log.count("model.embed_tokens") == T and log.count("model.norm") == T

    expected_keys = {"input_ids", "attention_mask", "position_ids", "past_key_values", "use_cache", "images",
                     "images_seq_mask", "images_spatial_crop", "return_dict"}
    for step, (kwargs, past_len) in enumerate(log.root_pre):
        assert set(kwargs) == expected_keys
        assert kwargs["use_cache"] is True and kwargs["return_dict"] is True
        assert kwargs["images"] is inp["images"] and kwargs["images_seq_mask"] is inp["images_seq_mask"]
        if step == 0:
            assert kwargs["input_ids"].shape == (1, S) and past_len == 0
            assert kwargs["position_ids"].tolist() == [list(range(S))]
            assert kwargs["attention_mask"].shape == (1, S)
        else:
            assert kwargs["input_ids"].shape == (1, 1) and past_len == S + step - 1
            assert kwargs["position_ids"].tolist() == [[S + step - 1]]
            assert kwargs["attention_mask"].shape == (1, S + step)
            assert kwargs["input_ids"][0, 0].item() == seqs[0, S + step - 1].item()


def test_moe_expert_selection(model):
    cfg = model.config
    T = 3
    with CallLog(model) as log:
        seqs = model.infer_synthetic(image_size=(600, 500), max_new_tokens=T, **MODES["small"])
    S = seqs.shape[1] - T
    moe_layers = range(cfg.first_k_dense_replace, cfg.num_hidden_layers)
    assert not any(".mlp.experts." in c[0] for c in log.calls if c[0].startswith("model.layers.0."))
    for layer in moe_layers:
        prefix = f"model.layers.{layer}.mlp.experts."
        per_step = defaultdict(Counter)
        tokens = defaultdict(int)
        for name, step, args, _, _ in log.calls:
            if name.startswith(prefix) and name.count(".") == 5:
                per_step[step][name] += 1
                tokens[step] += args[0].shape[0]
                assert args[0].dim() == 2 and args[0].shape[1] == cfg.hidden_size  # [n_tokens, hidden]
        assert log.count(f"model.layers.{layer}.mlp.gate") == T
        assert log.count(f"model.layers.{layer}.mlp.shared_experts") == T
        for step in range(T):
            assert all(v == 1 for v in per_step[step].values())  # each hit expert called once per step
            assert tokens[step] == (S if step == 0 else 1) * cfg.num_experts_per_tok
            if step > 0:
                assert len(per_step[step]) == cfg.num_experts_per_tok
            else:
                assert cfg.num_experts_per_tok <= len(per_step[step]) <= cfg.n_routed_experts


def test_real_depth_gundam_1400x900():
    cfg = StubConfig.real_depth()
    m = load_stub_model(cfg)
    with CallLog(m) as log:
        seqs = m.infer_synthetic(image_size=(1400, 900), max_new_tokens=2, **GUNDAM)
    assert seqs.shape[1] == 1 + 893 + PROMPT_TAIL + 2
    assert log.in_shapes("model.sam_model") == [(6, 3, 640, 640), (1, 3, 1024, 1024)]
    for i in range(12):
        assert log.count(f"model.sam_model.blocks.{i}") == 2
    for j in range(24):
        assert log.count(f"model.vision_model.transformer.layers.{j}") == 2
    for layer in range(12):
        assert log.count(f"model.layers.{layer}") == 2
    for layer in range(1, 12):
        prefix = f"model.layers.{layer}.mlp.experts."
        hit = {c[0] for c in log.calls if c[1] == 1 and c[0].startswith(prefix) and c[0].count(".") == 5}
        assert len(hit) == 6


def test_deterministic_and_finite():
    a, b, c = load_stub_model(seed=0), load_stub_model(seed=0), load_stub_model(seed=1)
    inp = a.prepare_infer_inputs(image_size=(512, 400), **MODES["tiny"])
    inp.pop("plan")
    with torch.no_grad():
        la = a(**inp).logits
        lb = b(**inp).logits
        lc = c(**inp).logits
    assert la.shape == (1, inp["input_ids"].shape[1], a.config.vocab_size)
    assert torch.isfinite(la).all()
    assert torch.equal(la, lb)
    assert not torch.equal(la, lc)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    load_stub_model(seed=5)
    assert torch.equal(torch.rand(1), before)  # the loader leaves the global RNG alone


def test_cached_decode_matches_full_recompute(model):
    inp = model.prepare_infer_inputs(image_size=None)
    inp.pop("plan")
    cached = model.generate(**inp, max_new_tokens=4, use_cache=True)
    full = model.generate(**inp, max_new_tokens=4, use_cache=False)
    assert torch.equal(cached, full)


def test_eos_stops_generation(model):
    inp = model.prepare_infer_inputs(image_size=None)
    inp.pop("plan")
    first = model.generate(**inp, max_new_tokens=1)[0, -1].item()
    with CallLog(model) as log:
        seqs = model.generate(**inp, max_new_tokens=5, eos_token_id=first)
    assert log.count("<root>") == 1 and seqs.shape[1] == inp["input_ids"].shape[1] + 1
