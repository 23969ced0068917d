"""Extractors for DeepSeek-OCR v1 (Hugging Face remote code). Shapes and Python values only.

Facts used (shared/reference/deepseek-ocr-v1.md): per sample, local crops batched into one call then the global
view; crops are present when the crop batch has 2 or more images (the no-crop placeholder is one zero image);
`images_spatial_crop` holds the grid (w, h) per sample and is read only when it lives on the CPU.
"""

from __future__ import annotations

from typing import Any

from loopmeta.model_configs.lanes import decoder_layer  # noqa: F401  (extractors named in the TOML)
from loopmeta.model_configs.lanes import step_lane as causal_lm_step  # noqa: F401
from loopmeta.model_configs.lanes import tokens_in as tokens  # noqa: F401
from loopmeta.model_configs.lanes import window_attention as sam_block  # noqa: F401
from loopmeta.model_configs.lanes import first_tensor, index_of, resolution


def ocr_model_views(call: Any) -> dict[str, Any]:
    """`DeepseekOCRModel.forward`: the views the vision encoders will be called on, in call order."""
    x = first_tensor(call, "input_ids", "inputs_embeds")
    lane: dict[str, Any] = {"seq_len": int(x.shape[1])}
    images, spatial = call.arg("images"), call.arg("images_spatial_crop")
    if images is None or x.shape[1] == 1:
        lane["vision"] = "skipped: no images" if images is None else "skipped: one-token input (decode step)"
        return lane
    grids: list[Any] = [None] * len(images)
    if spatial is not None and getattr(spatial, "device", None) is not None and spatial.device.type == "cpu":
        grids = [tuple(g) for g in spatial.tolist()]  # host values the vendor itself reads; no kernel runs
    views = []
    for sample, ((patches, image_ori), grid) in enumerate(zip(images, grids)):
        if patches.shape[0] >= 2:
            view = {"view": "local", "sample": sample, "batch": int(patches.shape[0]),
                    "resolution": resolution(patches)}
            if grid is not None:
                view["grid"] = f"{grid[0]}x{grid[1]}"
            views.append(view)
        views.append({"view": "global", "sample": sample, "batch": int(image_ori.shape[0]),
                      "resolution": resolution(image_ori)})
    lane["views"] = views
    return lane


def ocr_model_done(call: Any, result: Any) -> dict[str, Any]:
    return {"vision_ran": any(c.role == "vision.sam" for c in call.children),
            "layers_run": sum(1 for c in call.children if c.role == "llm.layer")}


def view_lane(call: Any) -> dict[str, Any]:
    """SAM, CLIP and projector calls: the k-th call inside one model call serves the k-th planned view."""
    views = call.parent.lane.get("views") if call.parent is not None else None
    x = call.args[0]
    if not views:
        raise ValueError(f"no view plan on the parent call for {call.address}")
    k = call.calls_before_in_parent()
    if k >= len(views):
        raise ValueError(f"{call.address} call {k + 1} in one model call, but only {len(views)} views planned")
    lane = dict(views[k])
    if call.role == "projector":
        lane["tokens"] = int(x.shape[1])
    if int(x.shape[0]) != lane["batch"]:
        raise ValueError(f"{call.address}: planned {lane['view']} view of batch {lane['batch']}, input batch "
                         f"{x.shape[0]}")
    return lane


def moe_selection(call: Any, result: Any) -> dict[str, Any]:
    """Experts hit in one MoE call, known from which `experts.i` modules ran (no tensor values read)."""
    hits = sorted((index_of(e.address), e.lane["tokens"]) for e in call.children if e.role == "llm.moe.expert")
    h = call.args[0]
    return {"tokens": int(h.shape[0] * h.shape[1]) if len(h.shape) == 3 else int(h.shape[0]),
            "experts_total": len(call.module.experts), "top_k": getattr(call.module.gate, "top_k", None),
            "k": len(hits), "experts_hit": [i for i, _ in hits], "tokens_per_expert": [t for _, t in hits]}


def quick_gelu(x: Any) -> Any:
    """Plain-Python twin of CLIP's TorchScript `quick_gelu`, bound only during the TorchLens trace."""
    import torch

    return x * torch.sigmoid(1.702 * x)
