"""Hugging Face helpers shared by the configs of transformers models: architectures of a hub model, loading an
image-text model with its processor, and the `generate()` probe (docs/models/*.md say which config uses what)."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError, SessionError
from ..events.lanes import PHASE, PREFILL, REAL_TOKENS
from ..sessions.contract import Session, SessionRequest, dtype_of, prompt_of
from .shapes import step_lane

# Keywords that would contradict a short probe of `generate()`: lengths, minimum lengths and output streaming.
_LENGTH_KEYWORDS = ("max_length", "min_length", "min_new_tokens", "streamer")


def architectures(request: SessionRequest) -> list[str]:
    """The `architectures` of a hub id or local folder, read from its config alone (no weights)."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(request.model, revision=request.revision,
                                               trust_remote_code=request.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise SessionError(f"cannot load the config of {request.model!r}: {exc}. Offline, the model must be in the "
                           "local Hugging Face cache or a local folder; remote code needs --trust-remote-code.") from None
    return list(getattr(hf_config, "architectures", None) or [])


def config_for_model(request: SessionRequest) -> Any:
    """The built-in config whose root classes hold one of the hub model's `architectures`."""
    from .config import config_for_classes

    archs = architectures(request)
    config = config_for_classes(archs)
    if config is None:
        raise ConfigError(f"no built-in config covers {request.model!r} (architectures {archs}): pass --config with "
                          "a config for it (model_configs/README.md), or use the config-free trace_structure() from "
                          "Python")
    return config


def load_error(model: str | None, exc: BaseException, what: str = "") -> SessionError:
    """A loading failure as one line that says what to do; a missing torchvision is named with its fix."""
    if "torchvision" in str(exc):
        import torch

        return SessionError(f"cannot load {model!r}: its image processor needs torchvision, which is not installed. "
                            f"Install the torchvision build that matches torch {torch.__version__} "
                            "(docs/models/README.md)")
    return SessionError(f"cannot load {model!r}{what}: {exc}")


def padded_step(call: Any) -> dict[str, Any]:
    """A causal-LM step's lane, plus at a first prefill of more than one sample the real (unpadded) tokens per
    sample: the sums of the attention mask's rows (a declared value read: one host copy per session)."""
    lane = step_lane(call)
    mask = call.arg("attention_mask")
    if lane[PHASE] == PREFILL and lane["past_len"] == 0 and lane["batch"] > 1 and getattr(mask, "ndim", 0) == 2:
        lane[REAL_TOKENS] = [int(sum(row)) for row in mask.tolist()]  # the one host copy
    return lane


def generate_probe(args: tuple, kwargs: dict[str, Any], steps: int) -> tuple[tuple, dict[str, Any]] | None:
    """`generate()` again on the same inputs for `steps` steps (prefill + decode steps), never more than the session
    asked for; None when the call had no `input_ids` to hand TorchLens as its positional input."""
    kwargs = dict(kwargs)
    if not args:
        if kwargs.get("input_ids") is None:
            return None
        args = (kwargs.pop("input_ids"),)
    asked = kwargs.pop("max_new_tokens", None)
    for name in _LENGTH_KEYWORDS:
        kwargs.pop(name, None)
    kwargs["max_new_tokens"] = steps if asked is None else min(asked, steps)
    return args, kwargs


def image_text_session(request: SessionRequest, config: Any) -> Session:
    """An `AutoModelForImageTextToText` with its `AutoProcessor`, run as `generate()` on one page, or on a batch of
    pages with one prompt each."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..sessions.pages import load_image

    common = dict(revision=request.revision, trust_remote_code=request.trust_remote_code)
    extra = {"attn_implementation": request.attn_implementation} if request.attn_implementation else {}
    try:
        model = AutoModelForImageTextToText.from_pretrained(request.model, dtype=dtype_of(request, config),
                                                            **extra, **common)
        processor = AutoProcessor.from_pretrained(request.model, **common)
    except (OSError, ValueError, ImportError) as exc:
        raise load_error(request.model, exc, f" as an image-text model with a processor (config {config.name!r})"
                         ) from None
    model = model.eval().to(request.device)

    def pages(images: tuple) -> Callable[[], Any]:
        loaded, prompt = [load_image(i) for i in images or (None,)], prompt_of(request, config)
        batch = dict(images=loaded, text=[prompt] * len(loaded), padding=True) if len(loaded) > 1 else \
            dict(images=loaded[0], text=prompt)  # a batch: one sample per page, padded to the longest
        inputs = prepared(model, request, lambda: processor(**batch, return_tensors="pt"))
        return lambda: model.generate(**inputs, max_new_tokens=request.max_new_tokens, do_sample=False)

    return Session(model, pages(request.images), request.model, page=lambda image: pages((image,)))


def prepared(model: Any, request: SessionRequest, process: Any) -> Any:
    """The model's experts implementation as asked, and the processor's inputs on the device; a value either
    refuses is a one-line `SessionError`."""
    try:
        if request.experts_implementation:
            model.set_experts_implementation(request.experts_implementation)
        return process().to(request.device)
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionError(f"cannot prepare the session: {exc}. Check --prompt (one <image> tag per image) and "
                           "--experts-implementation") from None
