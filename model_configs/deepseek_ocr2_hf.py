"""Extractors and session driver for DeepSeek-OCR 2 as shipped natively by transformers (config `deepseek_ocr2_hf`).

Facts used (docs/models/deepseek-ocr2-transformers.md): the vision tower runs once on the global views
(1024x1024, batch = images) and, when any image has crops, once on all crops (768x768, batch = sum of crops),
global first; in `generate()` this happens before the first forward. The per-image split of the crops is read
from the shapes of the features the model assembles image by image; the padding of a batched prefill from the
attention mask (one host copy per session, only for more than one sample). Experts are weight tensors, not modules, so
the experts hit are read from the router's top-k ids: the one documented tensor read of this config (one host copy
per MoE call, on an accelerator made when the step ends rather than mid-step; switch it off with
`instrument(..., options={"expert_ledger": False})`).
"""

from __future__ import annotations

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
    call; on an accelerator made when the step ends, `lanes.Later`, rather than while the step's kernels run)."""
    if not call.state.get("options", {}).get("expert_ledger", True):
        return {}
    ledger = Ledger(result[2], int(call.module.num_experts), int(call.module.top_k))
    return {"router": Later(ledger) if at_step_end(result[2]) else ledger()}


def at_step_end(ids: Any) -> bool:
    """Whether to read the ids when the step ends: on an accelerator, where a read now would make the host wait for
    the device mid-step; on the CPU there is nothing to wait for and reading now costs the least."""
    return ids.device.type != "cpu"


class Ledger:
    """Experts hit and tokens per expert of a router's top-k ids [tokens, k], read to the host once, when first asked
    (at the step's end: the router's lane and its MoE call's lane share the copy). Ids the model wrote to after the
    router returned them (their version counter moved, where torch keeps one) are refused: they would not be what it
    routed by."""

    __slots__ = ("ids", "version", "total", "top_k", "read")

    def __init__(self, ids: Any, total: int, top_k: int):
        # an inference-mode tensor keeps no version counter (reading it would raise: tens of microseconds)
        self.ids, self.version, self.total, self.top_k = ids, None if ids.is_inference() else ids._version, total, top_k
        self.read: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        if self.read is None:
            if self.version is not None and self.ids._version != self.version:
                raise ValueError("the router's top-k ids were written to after the router returned them")
            counts = Counter(e for row in self.ids.tolist() for e in row)  # the one host copy
            hit = sorted(counts)
            values = (hit, [counts[e] for e in hit], self.total, self.top_k, int(self.ids.shape[0]))
            self.read = dict(zip(LEDGER_KEYS, values, strict=True))
            self.ids = None
        return self.read


def moe_done(call: Any, result: Any) -> dict[str, Any]:
    """The MoE call carries its router's ledger (read with the router's, when the step ends) and the experts
    implementation in use."""
    lane: dict[str, Any] = {EXPERTS_IMPLEMENTATION: getattr(call.module.experts.config, "_experts_implementation",
                                                            None)}
    gate = [c for c in call.children if c.role == "llm.moe.gate"]
    router = gate[0].lane.get("router") if gate else None
    if isinstance(router, Later):
        lane.update({key: Later(lambda key=key: router.read()[key]) for key in LEDGER_KEYS})
    elif router is not None:
        lane.update(router)
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
