"""Extractors and session driver for DeepSeek-OCR 2 as shipped natively by transformers (config `deepseek_ocr2_hf`).

Facts used (docs/models/deepseek-ocr2-transformers.md): the vision tower runs once on the global views
(1024x1024, batch = images) and, when any image has crops, once on all crops (768x768, batch = sum of crops),
global first; in `generate()` this happens before the first forward. The per-image split of the crops is read
from the shapes of the features the model assembles image by image; the padding of a batched prefill from the
attention mask (one host copy per session, only for more than one sample). Experts are weight tensors, not modules, so
the experts hit are read from the router's top-k ids: the one documented tensor read of this config (one host copy
per MoE call, made when the step ends rather than mid-step; switch it off with
`instrument(..., options={"expert_ledger": False})`).
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

from ..events.lanes import (EXPERTS_HIT, EXPERTS_IMPLEMENTATION, EXPERTS_TOTAL, IMAGES, IMAGES_BATCHED,
                            TOKENS_PER_EXPERT, TOP_K, Later)
from .hf import generate_probe, image_text_session, padded_step  # noqa: F401  (functions named in the TOML)
from .shapes import resolution

LEDGER_KEYS = (EXPERTS_HIT, TOKENS_PER_EXPERT, EXPERTS_TOTAL, TOP_K, "tokens")  # a router's ledger, in order
GLOBAL_SIZE, TILE_SIZE = 1024, 768  # pixels of a global view and of a crop
GLOBAL_TOKENS, TILE_TOKENS = 256, 144  # learned queries per view (hard-coded in the vendor model)


def vision_view(call: Any) -> dict[str, Any]:
    """`vision_tower`: the global views and the crops are told apart by their resolution."""
    x = call.arg("pixel_values")
    size = int(x.shape[-1])
    views = {GLOBAL_SIZE: "global", TILE_SIZE: "local"}
    if size not in views:
        raise ValueError(f"vision input of {size}x{size}: neither a global view ({GLOBAL_SIZE}) nor a crop ({TILE_SIZE})")
    return {"view": views[size], "batch": int(x.shape[0]), "resolution": resolution(x)}


def step_images(call: Any, result: Any) -> dict[str, Any]:
    """The images of a step that received image features, in batch order, from the shapes of the per-image features
    the model assembled (`image_outputs.pooler_output`: local crops, global view, separator per image): crops =
    (tokens - 256 - 1) / 144. The crop grid is not passed to the model, so it is not known here."""
    features = getattr(getattr(result, "image_outputs", None), "pooler_output", None)
    if not features:
        return {}
    images = []
    for f in features:
        tokens = int(f.shape[0])
        crops, rest = divmod(tokens - GLOBAL_TOKENS - 1, TILE_TOKENS)
        images.append({"crops": crops, "tokens": tokens} if not rest and crops >= 0 else {"tokens": tokens})
    return {IMAGES: images, IMAGES_BATCHED: True}  # all crops in one vision call, split per image after it


def projector_view(call: Any) -> dict[str, Any]:
    """The projector runs right after each vision-tower call; its token count names the view."""
    x = call.args[0]
    n = int(x.shape[1])
    views = {GLOBAL_TOKENS: "global", TILE_TOKENS: "local"}
    if n not in views:
        raise ValueError(f"projector input of {n} tokens: neither a global view ({GLOBAL_TOKENS}) nor a crop "
                         f"({TILE_TOKENS})")
    return {"view": views[n], "batch": int(x.shape[0]), "tokens": n}


def router_topk(call: Any, result: Any) -> dict[str, Any]:
    """The router's top-k ids -> experts hit and tokens per expert (the documented exception: one host read per MoE
    call, made when the step ends (`lanes.Later`) rather than while the step's kernels still run on a GPU)."""
    if not call.state.get("options", {}).get("expert_ledger", True):
        return {}
    ids = result[2]
    read = functools.partial(_ledger, ids, _version(ids), int(call.module.num_experts), int(call.module.top_k))
    return {"router": Later(functools.cache(read))}  # cached: the MoE call's lane reads the same copy


def _version(tensor: Any) -> int | None:
    """The tensor's version counter (it moves when the tensor is written to in place); None for a tensor made under
    `torch.inference_mode`, which has none."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def _ledger(ids: Any, version: int | None, total: int, top_k: int) -> dict[str, Any]:
    """Experts hit and tokens per expert of top-k ids [tokens, k], read at the step's end; refuses ids the model
    wrote to after the router returned them (their version counter moved, where torch keeps one), which would not be
    what it routed by."""
    if _version(ids) != version:
        raise ValueError("the router's top-k ids were written to after the router returned them")
    counts = Counter(e for row in ids.tolist() for e in row)  # the one host copy
    hit = sorted(counts)
    return {EXPERTS_HIT: hit, TOKENS_PER_EXPERT: [counts[e] for e in hit], EXPERTS_TOTAL: total, TOP_K: top_k,
            "tokens": int(ids.shape[0])}


def moe_done(call: Any, result: Any) -> dict[str, Any]:
    """The MoE call carries its router's ledger (read with the router's, when the step ends) and the experts
    implementation in use."""
    lane: dict[str, Any] = {EXPERTS_IMPLEMENTATION: getattr(call.module.experts.config, "_experts_implementation",
                                                            None)}
    gate = [c for c in call.children if c.role == "llm.moe.gate"]
    router = gate[0].lane.get("router") if gate else None
    if router is not None:
        lane.update({key: Later(lambda key=key: router.read()[key]) for key in LEDGER_KEYS})
    return lane


def page_bounds(table: Any) -> dict[str, int]:
    """A page's vision bounds for a corpus: `views` (vision-tower calls: 1, or 2 with crops), and from the step
    lane `images` (`step_images`) the `images`, their `crops` and their `image_tokens`."""
    c = table.columns
    roles = [table.nodes[node].role for node in c["node"]]
    images = [image for lane in c["lane"] for image in table.lanes[lane].get(IMAGES, [])]
    return {"views": roles.count("vision.tower"), "images": len(images),
            "crops": sum(image.get("crops", 0) for image in images),
            "image_tokens": sum(image["tokens"] for image in images)}
