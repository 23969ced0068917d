"""Tiny configuration for the stubbed DeepSeek-OCR v1 model (test double, not vendor code).

The real vendor hard-codes the vision sizes; the stub reads them from this config so that they can be shrunk.
Field names of the LLM part follow the public ``config.json`` of DeepSeek-OCR (``first_k_dense_replace``,
``n_routed_experts``, ``num_experts_per_tok``, ...).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple


@dataclass
class StubConfig:
    # ---- SAM ViT-B (model.sam_model) ------------------------------------------------------------------------
    sam_img_size: int = 1024  # pos_embed grid = sam_img_size / sam_patch_size (interpolated for other inputs)
    sam_patch_size: int = 16
    sam_width: int = 32
    sam_depth: int = 4
    sam_heads: int = 2
    sam_mlp_ratio: float = 4.0
    sam_window_size: int = 14
    sam_global_attn_indexes: Tuple[int, ...] = (1, 3)
    sam_neck_chans: int = 16  # neck.0..3 output channels (vendor: 256)
    sam_net2_chans: int = 32  # net_2 output channels (vendor: 512); net_3 outputs clip_width (vendor: 1024)

    # ---- CLIP-L (model.vision_model) ------------------------------------------------------------------------
    clip_width: int = 32
    clip_layers: int = 2
    clip_heads: int = 2
    clip_mlp_ratio: float = 4.0
    clip_image_size: int = 224
    clip_patch_size: int = 14  # patch_embedding conv (never called)

    # ---- LLM (DeepseekV2, use_mla = false) -----------------------------------------------------------------
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128  # dense MLP of layers < first_k_dense_replace
    moe_intermediate_size: int = 32
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    n_shared_experts: int = 2
    topk_method: str = "greedy"
    scoring_func: str = "softmax"
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    use_mla: bool = False
    _attn_implementation: str = "eager"

    # ---- special token ids (stub vocabulary) ------------------------------------------------------------
    bos_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 2
    image_token_id: int = 510

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def tiny(cls, **overrides) -> "StubConfig":
        return cls(**overrides)

    @classmethod
    def real_depth(cls, **overrides) -> "StubConfig":
        """Real depths / expert counts of DeepSeek-OCR v1 (SAM 12 blocks, global at 2,5,8,11; CLIP 24 layers;
        LLM 12 layers with 64 routed experts top-6), at the tiny widths so it still runs on CPU in seconds."""
        kw = dict(
            sam_depth=12,
            sam_global_attn_indexes=(2, 5, 8, 11),
            clip_layers=24,
            num_hidden_layers=12,
            n_routed_experts=64,
            num_experts_per_tok=6,
        )
        kw.update(overrides)
        return cls(**kw)

    def replace(self, **changes) -> "StubConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# vendor-style alias
DeepseekV2Config = StubConfig
