"""Stub of DeepSeek-OCR 2's ``deepencoderv2.py``: SAM ViT-B, the Qwen2 encoder ("DeepEncoder V2") and the projector.

Test double written from docs/models/deepseek-ocr2-remote.md (module tree, Qwen2 encoder, test model); not vendor
code. The builders take no arguments, as the vendor's do (their sizes are hard-coded; the stub's are tiny, and tests
shrink or grow them by rebinding the builder names in ``modeling_deepseekocr2``, as the facts describe). SAM is the
v1 stub's class, its ``net_3`` emitting the encoder's width.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import Qwen2Config, Qwen2Model

from .configuration_deepseek_v2 import StubConfig
from .deepencoder import ImageEncoderViT, MlpProjector  # noqa: F401  (MlpProjector: the vendor's name, re-exported)

ENCODER_WIDTH = 64  # vendor: 896 = SAM's net_3 channels = the projector's input
QUERIES = {256: "query_1024", 144: "query_768"}  # learned query sets by token count (16x16 and 12x12 SAM maps)


def _build_sam(encoder_embed_dim: int = 32, encoder_depth: int = 4, encoder_num_heads: int = 2,
               encoder_global_attn_indexes=(1, 3)) -> ImageEncoderViT:
    sizes = StubConfig(sam_width=encoder_embed_dim, sam_depth=encoder_depth, sam_heads=encoder_num_heads,
                       sam_global_attn_indexes=tuple(encoder_global_attn_indexes))
    return ImageEncoderViT(sizes, out_chans=ENCODER_WIDTH)


def build_sam_vit_b() -> ImageEncoderViT:
    return _build_sam()


def image_query_mask(token_types: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The encoder's 4-D additive mask, built in Python per call (a loop over the batch, and in it over the query
    positions): image tokens (type 0) see every image token; query i sees every image token and queries 0..i."""
    batch, length = token_types.shape
    mask = torch.full((batch, 1, length, length), torch.finfo(dtype).min, dtype=dtype, device=token_types.device)
    for b in range(batch):
        n = int((token_types[b] == 0).sum())
        mask[b, 0, :n, :n] = 0
        for i in range(length - n):
            mask[b, 0, n + i, : n + i + 1] = 0
    return mask


class CustomQwen2Decoder(nn.Module):
    """Thin wrapper whose forward calls ``.model``, an instance of a class made anew per wrapper (its qualified name
    holds ``<locals>``): a subclass of transformers' ``Qwen2Model`` whose ``_update_causal_mask`` (transformers 4.4x
    calls it from ``Qwen2Model.forward``) returns the image/query mask."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()

        class CustomQwen2ModelInner(Qwen2Model):
            def _update_causal_mask(self, attention_mask, input_tensor, cache_position, past_key_values,
                                    output_attentions):
                return image_query_mask(attention_mask, input_tensor.dtype)

        self.model = CustomQwen2ModelInner(config)
        del self.model.embed_tokens  # built, then deleted: the encoder is fed embeddings

    def forward(self, inputs_embeds: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=inputs_embeds, attention_mask=token_type_ids, use_cache=False,
                          return_dict=True).last_hidden_state


class Qwen2Decoder2Encoder(nn.Module):
    """SAM's map [B, C, h, w] -> n = h*w tokens, followed by the n learned queries of that size; the 2n sequence runs
    through the decoder layers and the n query outputs come back. The query embeddings are never called (only their
    weights are read); an n without a query set fails as the vendor's does (UnboundLocalError)."""

    def __init__(self, decoder_layer: int, hidden_dimension: int, num_attention_heads: int, num_key_value_heads: int,
                 intermediate_size: int, vocab_size: int) -> None:
        super().__init__()
        config = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_dimension, intermediate_size=intermediate_size,
                             num_hidden_layers=decoder_layer, num_attention_heads=num_attention_heads,
                             num_key_value_heads=num_key_value_heads, rope_theta=1000000.0, use_cache=False,
                             attn_implementation="sdpa")
        self.model = CustomQwen2Decoder(config)
        self.query_1024 = nn.Embedding(256, hidden_dimension)
        self.query_768 = nn.Embedding(144, hidden_dimension)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # [B, n, C]
        batch, n, _ = x.shape
        if n == 256:
            queries = self.query_1024.weight
        elif n == 144:
            queries = self.query_768.weight
        combined = torch.cat([x, queries[None].expand(batch, -1, -1).to(x.dtype)], dim=1)
        token_types = torch.cat([torch.zeros(batch, n, dtype=torch.long, device=x.device),
                                 torch.ones(batch, n, dtype=torch.long, device=x.device)], dim=1)
        return self.model(combined, token_types)[:, n:]


def build_qwen2_decoder_as_encoder(decoder_layer: int = 3, intermediate_size: int = 128) -> Qwen2Decoder2Encoder:
    """The encoder (vendor: 24 layers, 896 wide, 14 heads, 2 KV heads, MLP 4864, its 151936-token embedding deleted)."""
    return Qwen2Decoder2Encoder(decoder_layer, ENCODER_WIDTH, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=intermediate_size, vocab_size=32)
