"""What DeepSeek-OCR's Hugging Face remote code shares between v1 and DeepSeek-OCR 2 (configs `deepseek_ocr_v1` and
`deepseek_ocr2_remote`): the view plan of `model.forward`, the view lanes of the vision calls, the MoE ledger from
the expert modules that ran, and the session driver around the vendor's own `infer()`.

Facts used (docs/models/deepseek-ocr-v1.md, docs/models/deepseek-ocr2-remote.md#differences-from-v1): per sample,
local crops batched into one call, then the global view; crops are present when the crop batch has 2 or more
images (the no-crop placeholder is one zero image); `images_spatial_crop` holds the grid (w, h) per sample and is
read only when it lives on the CPU; `modeling_deepseekv2.py` (experts as modules, skip-empty loop) is the same file
in both. Sessions run `infer()` with the settings of a mode (`[session.modes]`), each overridable from the request.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..common.attributes import swapped
from ..errors import SessionError
from ..events.lanes import EXPERTS_HIT, EXPERTS_TOTAL, IMAGES, TOKENS_PER_EXPERT, TOP_K
from ..sessions.contract import Session, SessionRequest, dtype_of, prompt_of
from ..sessions.pages import load_image
from .hf import load_error
from .shapes import first_tensor, index_of, resolution


def ocr_model_views(call: Any) -> dict[str, Any]:
    """`model.forward`: the views the vision encoders will be called on, in call order."""
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


def step_images(call: Any, result: Any) -> dict[str, Any]:
    """The step's images in sample order, from the view plan of its model call: crops (0 without) and grid."""
    model = next((c for c in call.children if c.role == "model"), None)
    views = model.lane.get("views") if model is not None else None
    if not views:
        return {}
    images: dict[int, dict[str, Any]] = {}
    for view in views:
        image = images.setdefault(view["sample"], {"crops": 0})
        if view["view"] == "local":
            image.update({"crops": view["batch"], **({"grid": view["grid"]} if "grid" in view else {})})
    return {IMAGES: [images[s] for s in sorted(images)]}


def ocr_model_done(call: Any, result: Any) -> dict[str, Any]:
    return {"vision_ran": any(c.role == "vision.sam" for c in call.children)}


def view_lane(call: Any) -> dict[str, Any]:
    """The vision and projector calls: the k-th call inside one model call serves the k-th planned view."""
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
            EXPERTS_TOTAL: len(call.module.experts), TOP_K: getattr(call.module.gate, "top_k", None),
            EXPERTS_HIT: [i for i, _ in hits], TOKENS_PER_EXPERT: [t for _, t in hits]}


@contextlib.contextmanager
def cuda_as_noop() -> Iterator[None]:
    """`Tensor.cuda()` returns the tensor itself while active: the vendor code calls it unconditionally, so on a CPU
    users make it a no-op (docs/models/deepseek-ocr-v1.md#cpu)."""
    import torch

    with swapped((torch.Tensor, "cuda", lambda self, *args, **kwargs: self)):
        yield


@contextlib.contextmanager
def generate_capped(cls: type, limit: int) -> Iterator[None]:
    """`cls.generate` asked for at most `limit` new tokens while active: `infer()` asks for 8192
    (docs/models/deepseek-ocr-v1.md#infer), the user's --max-new-tokens wins."""
    import wrapt

    def cap(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        kwargs["max_new_tokens"] = min(kwargs.get("max_new_tokens") or limit, limit)
        return wrapped(*args, **kwargs)

    with swapped((cls, "generate", wrapt.FunctionWrapper(getattr(cls, "generate"), cap))):
        yield


def infer_settings(request: SessionRequest, config: Any) -> tuple[str, dict[str, Any]]:
    """The mode and the `infer()` settings to run with (the mode's, overridden by the request's); refuses what the
    vendor's `infer()` cannot do, with what to pass instead."""
    modes = config.session.modes
    mode = request.mode or config.session.default_mode
    if mode not in modes:
        raise SessionError(f"unknown mode {mode!r} for {config.name}: use --mode with one of {', '.join(modes)}")
    if len(request.images) > 1 or isinstance(request.image, tuple):
        raise SessionError(f"{config.name} runs the vendor's infer(), which takes one image file: pass one --image FILE")
    if request.image is None or "<image>" not in prompt_of(request, config):
        raise SessionError(f"{config.name} runs the vendor's infer(), which needs an image: pass --image and a "
                           "prompt with an <image> tag")
    load_image(request.image)  # a missing or undecodable image is named here, not deep inside infer()
    needed = config.session.dtype
    if request.dtype not in (None, needed):
        raise SessionError(f"{config.name}'s infer() feeds {needed} images to the vision encoders: pass --dtype "
                           f"{needed} (the default for this model), not {request.dtype}")
    return mode, {**modes[mode], **request.settings}


def infer_session(request: SessionRequest, config: Any) -> Session:
    """Load the remote-code model and its tokenizer; the session is the vendor's `infer()` on one image file, its
    `generate` capped at the user's --max-new-tokens, `Tensor.cuda()` a no-op on a CPU."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    mode, settings = infer_settings(request, config)
    common = dict(revision=request.revision, trust_remote_code=request.trust_remote_code)
    try:
        model = AutoModel.from_pretrained(request.model, _attn_implementation=request.attn_implementation or "eager",
                                          torch_dtype=dtype_of(request, config), **common)
        tokenizer = AutoTokenizer.from_pretrained(request.model, **common)
    except (OSError, ValueError, ImportError) as exc:
        raise load_error(request.model, exc) from None
    model = model.eval().to(request.device)

    def run() -> Any:
        return model.infer(tokenizer, prompt=prompt_of(request, config), image_file=str(request.image),
                           output_path=str(request.out), save_results=False, eval_mode=True, **settings)

    on_cpu = torch.device(request.device).type == "cpu"

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        with generate_capped(type(model), request.max_new_tokens), (cuda_as_noop() if on_cpu
                                                                    else contextlib.nullcontext()):
            yield

    shown = ", ".join(f"{k}={v}" for k, v in request.settings.items())
    label = (f"{request.model} ({config.name}, mode {mode}" + (f" with {shown}" if shown else "")
             + f", at most {request.max_new_tokens} new tokens")
    return Session(model, run, label + (", .cuda() as a no-op)" if on_cpu else ")"), context=context)
