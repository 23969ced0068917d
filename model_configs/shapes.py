"""Shape-only helpers shared by the per-model adapters, and the generic extractors every config may name without
an adapter (`GENERIC`). They never run a tensor op."""

from __future__ import annotations

import functools
from typing import Any

from ..events.lanes import DECODE, PHASE, PREFILL


def past_length(cache: Any, layer_idx: int = 0) -> int:
    """Tokens already in a KV cache for one layer, read from shapes (DynamicCache or legacy tuples)."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length(layer_idx))
    if isinstance(cache, (tuple, list)):
        return int(cache[layer_idx][0].shape[-2]) if len(cache) > layer_idx else 0
    raise TypeError(f"unknown KV cache type {type(cache).__name__}")


@functools.lru_cache(maxsize=4096)
def index_of(address: str) -> int:
    """The last integer component of an address (`model.layers.7` -> 7)."""
    return int(address.rsplit(".", 1)[1])


def resolution(tensor: Any) -> str:
    """`HxW` of an image batch [B, C, H, W]."""
    return f"{tensor.shape[-2]}x{tensor.shape[-1]}"


def first_tensor(call: Any, *names: str) -> Any:
    """The first of the named arguments that is not None (tensor or other object)."""
    for name in names:
        value = call.arg(name)
        if value is not None:
            return value
    return None


def step_lane(call: Any) -> dict[str, Any]:
    """Lane of a causal-LM top-level forward: phase, tokens in, past and total KV length (attends to kv_len)."""
    x = first_tensor(call, "input_ids", "inputs_embeds")
    past = past_length(first_tensor(call, "cache", "past_key_values"))
    seq = int(x.shape[1])
    # one new token on top of a cache is a decode step; a chunked prefill feeds several tokens on top of one
    return {PHASE: DECODE if seq == 1 and past > 0 else PREFILL, "batch": int(x.shape[0]), "seq_len": seq,
            "past_len": past, "kv_len": past + seq}


def tokens_in(call: Any) -> dict[str, Any]:
    """Batch and sequence length of the first positional tensor ([B, S, ...] or [N, D] tokens)."""
    x = call.args[0] if call.args else next(iter(call.kwargs.values()))
    return {"batch": int(x.shape[0]), "seq_len": int(x.shape[1])} if len(x.shape) > 2 else {"tokens": int(x.shape[0])}


def window_attention(call: Any) -> dict[str, Any]:
    """A SAM block/layer: global attention (window size 0) or windowed, from the module's own parameter."""
    window = int(call.module.window_size)
    return {"attention": "global" if window == 0 else f"window {window}", "batch": int(call.args[0].shape[0])}


def decoder_layer(call: Any) -> dict[str, Any]:
    """A decoder layer: tokens in, past length of its own cache layer (read before it updates), MLP class."""
    h = call.arg("hidden_states")
    cache = first_tensor(call, "cache", "past_key_value", "past_key_values")
    return {"seq_len": int(h.shape[1]), "past_len": past_length(cache, index_of(call.address)),
            "mlp": type(call.module.mlp).__name__}


GENERIC = {  # extractor names any config may use, adapter or not (an adapter function of the same name wins)
    "causal_lm_step": step_lane,
    "tokens": tokens_in,
    "decoder_layer": decoder_layer,
    "window_attention": window_attention,
}
