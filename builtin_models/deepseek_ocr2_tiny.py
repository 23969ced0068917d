"""Offline, random-weight DeepSeek-OCR 2 sessions built from transformers' native ``deepseek_ocr2`` code.

Nothing here downloads anything: the config is written in code, the weights are random (seeded), and the
tokenizer is a small WordLevel ``PreTrainedTokenizerFast`` built in memory. The image processor and the
``DeepseekOcr2Processor`` are the real vendor classes, so crop counts, image-token counts and the module calls
of a forward are the real ones.

All transformers / PIL imports are inside functions: this module imports fine under transformers 4.46.3,
which has no ``deepseek_ocr2`` (use :func:`is_available` to check).

Sizes
-----
``"tiny"``
    SAM 32 wide / 4 layers (global attention at 1 and 3), vision encoder 48 wide / 3 layers, LM 64 wide /
    3 layers (layer 0 dense, then MoE with 8 experts, top-2, 1 shared expert), LM vocab 128. About 0.5 M
    parameters. SAM image size 1024, patch 16 and the real 1024 / 768 inputs are kept (the query counts
    256 / 144 are hard-coded in the vendor model).
``"quarter"``
    A quarter of the real widths with the REAL depths and MoE shape: SAM 192 wide / 12 layers (global at
    2, 5, 8, 11), encoder 224 wide / 24 layers, LM 320 wide / 12 layers (layer 0 dense, 11 MoE layers with
    64 experts, top-6, 2 shared), real LM vocab 129280. Reproduces the real loop bounds.
``"full"``
    The real widths and depths (SAM ViT-B 768 wide, encoder 896 wide with MLP 4864, LM 1280 wide with dense
    MLP 6848 and experts 896 wide): the real model's shapes and cost with random weights, for GPU
    benchmarks (build it with ``device="cuda"``; about 3.4 G parameters).

The crop rule and token counts of the real processor: docs/models/deepseek-ocr2-transformers.md.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Any, Callable

import torch

from ..errors import SessionError
from ..sessions.contract import Session, SessionRequest
from ..sessions.pages import load_image

# ---------------------------------------------------------------------------------------------------------
# Constants shared by the tokenizer and the config
# ---------------------------------------------------------------------------------------------------------
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<image>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, UNK_TOKEN)
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID, IMAGE_TOKEN_ID, UNK_TOKEN_ID = range(5)

# A few words / symbols so that prompts and decoded output look like text. Everything else maps to <unk>.
_WORDS = (
    "Free OCR . , : ; ! ? ( ) - / # * | Convert the document to markdown text page line table figure title "
    "a an and of in on is to for with 0 1 2 3 4 5 6 7 8 9 A B C D E F G H I J K L M N O P Q R S T U V W X Y Z"
).split()
TOKENIZER_VOCAB_SIZE = len(SPECIAL_TOKENS) + len(_WORDS)

SIZES = ("tiny", "quarter", "full")  # keys of _SHAPES
DEFAULT_PROMPT = "<image>\nFree OCR."


def is_available() -> bool:
    """True when the installed transformers ships the native ``deepseek_ocr2`` model."""
    try:
        return importlib.util.find_spec("transformers.models.deepseek_ocr2") is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------------------
# Config and model
# ---------------------------------------------------------------------------------------------------------
# Sub-config keyword arguments per size: SAM, vision encoder, language model (see the module docstring).
_SHAPES = {
    "tiny": dict(
        sam=dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, global_attn_indexes=[1, 3],
                 window_size=14, output_channels=16, downsample_channels=[24, 48],  # the last = the encoder width
                 image_size=1024, patch_size=16),
        encoder=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=16,  # unused (the encoder gets inputs_embeds)
                     max_position_embeddings=2048),
        text=dict(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8,
                  num_experts_per_tok=2, n_shared_experts=1, mlp_layer_types=["dense"] + ["sparse"] * 2,
                  max_position_embeddings=4096)),
    "quarter": dict(
        sam=dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11],
                 window_size=14, output_channels=64, downsample_channels=[128, 224], image_size=1024,
                 patch_size=16),
        encoder=dict(hidden_size=224, intermediate_size=1216, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, vocab_size=16, max_position_embeddings=2048),
        text=dict(vocab_size=129280, hidden_size=320, intermediate_size=1712, moe_intermediate_size=224,
                  num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=10, n_routed_experts=64,
                  num_experts_per_tok=6, n_shared_experts=2, mlp_layer_types=["dense"] + ["sparse"] * 11,
                  max_position_embeddings=8192)),
    "full": dict(
        sam=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11],
                 window_size=14, output_channels=256, downsample_channels=[512, 896], image_size=1024,
                 patch_size=16),
        encoder=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, vocab_size=16, max_position_embeddings=2048),
        text=dict(vocab_size=129280, hidden_size=1280, intermediate_size=6848, moe_intermediate_size=896,
                  num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=10, n_routed_experts=64,
                  num_experts_per_tok=6, n_shared_experts=2, mlp_layer_types=["dense"] + ["sparse"] * 11,
                  max_position_embeddings=8192)),
}


def _size_dicts(size: str) -> tuple[dict, dict, dict]:
    if size not in _SHAPES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    shapes = copy.deepcopy(_SHAPES[size])
    text = {**shapes["text"], "pad_token_id": PAD_TOKEN_ID, "bos_token_id": BOS_TOKEN_ID,
            "eos_token_id": EOS_TOKEN_ID, "topk_method": "greedy"}
    return shapes["sam"], shapes["encoder"], text


def tiny_config(size: str = "tiny", attn_implementation: str = "sdpa", experts_implementation: str | None = None):
    """A ``DeepseekOcr2Config`` for ``size`` in ``("tiny", "quarter")``.

    ``mlp_layer_types`` and ``num_experts_per_tok`` are always passed (the defaults, None, cannot build a
    model). ``attn_implementation`` must be chosen here, before the model is built: the SAM attention class
    (``DeepseekOcr2SamVisionSdpaAttention`` or ``DeepseekOcr2SamVisionAttention``) is picked at construction.
    Both ``"sdpa"`` (the vendor default) and ``"eager"`` run on CPU.
    """
    from transformers.models.deepseek_ocr2 import DeepseekOcr2Config

    sam, enc, text = _size_dicts(size)
    kwargs = dict(
        vision_config=dict(sam_config=sam, encoder_config=enc),
        text_config=text,
        image_token_id=IMAGE_TOKEN_ID,
        attn_implementation=attn_implementation,
    )
    if experts_implementation is not None:
        kwargs["experts_implementation"] = experts_implementation
    return DeepseekOcr2Config(**kwargs)


def build_model(
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    experts_implementation: str | None = None,
    attn_implementation: str = "sdpa",
    device: str = "cpu",
):
    """A random-weight ``DeepseekOcr2ForConditionalGeneration`` in eval mode.

    Weights are deterministic for a given ``seed`` (the global torch RNG is forked, not disturbed); ``device``
    is where the parameters are created (``"cuda"`` builds the full size without a host copy).
    ``experts_implementation``: None keeps the vendor default (``"grouped_mm"``; on CPU with torch >= 2.10 it
    runs ``torch.nn.functional.grouped_mm`` natively), or ``"eager"`` (a Python loop over the experts hit),
    ``"batched_mm"``, ``"grouped_mm"``. It is applied with ``model.set_experts_implementation`` and can be
    switched later the same way.
    """
    from transformers.models.deepseek_ocr2 import DeepseekOcr2ForConditionalGeneration

    config = tiny_config(size, attn_implementation=attn_implementation)
    place = torch.device(device)
    gpus = [place.index or 0] if place.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus), place:
        torch.manual_seed(seed)
        model = DeepseekOcr2ForConditionalGeneration(config)
    if dtype != torch.float32:
        model = model.to(dtype=dtype)
        # as from_pretrained does (`_keep_in_fp32_modules_strict = ["gate.weight"]`): routers stay in fp32
        for name, module in model.named_modules():
            if name.endswith("mlp.gate"):
                module.weight.data = module.weight.data.float()
        model.config.dtype = dtype
        for key in model.config.sub_configs:
            getattr(model.config, key).dtype = dtype
    if experts_implementation is not None:
        model.set_experts_implementation(experts_implementation)
    # Greedy, deterministic generation by default.
    gen = model.generation_config
    gen.do_sample = False
    gen.pad_token_id = PAD_TOKEN_ID
    gen.bos_token_id = BOS_TOKEN_ID
    gen.eos_token_id = EOS_TOKEN_ID
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Tokenizer and processor
# ---------------------------------------------------------------------------------------------------------
def build_tokenizer():
    """A small offline ``PreTrainedTokenizerFast`` (WordLevel, whitespace/punctuation pre-tokenizer).

    ids: ``<pad>`` 0, ``<s>`` 1 (bos, prepended to every text), ``</s>`` 2 (eos), ``<image>`` 3 (special),
    ``<unk>`` 4, then a few words. Its vocabulary (``TOKENIZER_VOCAB_SIZE``) fits the tiny LM vocab (128).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(_WORDS))}
    assert vocab[IMAGE_TOKEN] == IMAGE_TOKEN_ID and vocab[BOS_TOKEN] == BOS_TOKEN_ID
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, BOS_TOKEN_ID)],
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IMAGE_TOKEN],
        padding_side="left",
    )
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == IMAGE_TOKEN_ID
    return tokenizer


def build_image_processor(backend: str = "auto"):
    """The real DeepSeek-OCR 2 image processor.

    ``backend``: ``"torchvision"`` (``DeepseekOcr2ImageProcessor``, needs torchvision), ``"pil"``
    (``DeepseekOcr2ImageProcessorPil``, numpy + PIL), or ``"auto"`` (torchvision when importable).
    Both apply the same crop rule and produce the same keys.
    """
    import transformers.models.deepseek_ocr2 as ocr2

    if backend == "auto":
        backend = "torchvision" if importlib.util.find_spec("torchvision") is not None else "pil"
    if backend == "torchvision":
        return ocr2.DeepseekOcr2ImageProcessor()
    if backend == "pil":
        return ocr2.DeepseekOcr2ImageProcessorPil()
    raise ValueError(f"unknown image processor backend {backend!r}")


def build_processor(backend: str = "auto"):
    """The real ``DeepseekOcr2Processor`` (real image processor) with the offline tokenizer."""
    from transformers.models.deepseek_ocr2 import DeepseekOcr2Processor

    return DeepseekOcr2Processor(image_processor=build_image_processor(backend), tokenizer=build_tokenizer())


def prepare_inputs(processor, image, prompt: str = DEFAULT_PROMPT, dtype: torch.dtype | None = None):
    """Processor outputs (a ``BatchFeature`` of tensors) ready for ``model(**inputs)`` and
    ``model.generate(**inputs, max_new_tokens=N)``.

    Keys: ``input_ids`` (1, L), ``attention_mask`` (1, L), ``pixel_values`` (B, 3, 1024, 1024),
    ``num_local_patches`` (B,) int64 and, only when some image has crops, ``pixel_values_local``
    (sum K, 3, 768, 768). ``image`` may be one PIL image or a list (one ``<image>`` per image in ``prompt``).
    ``dtype`` casts the pixel tensors (e.g. to match a bfloat16 model).
    """
    return _cast(processor(images=image, text=prompt, return_tensors="pt"), dtype)


def prepare_batch(processor, pages: list, prompt: str = DEFAULT_PROMPT, dtype: torch.dtype | None = None):
    """A batch of pages, one sample each with the same prompt, left-padded to the longest (the tokenizer pads on
    the left); one page is `prepare_inputs`."""
    if len(pages) == 1:
        return prepare_inputs(processor, pages[0], prompt, dtype)
    return _cast(processor(images=pages, text=[prompt] * len(pages), padding=True, return_tensors="pt"), dtype)


def _cast(inputs, dtype: torch.dtype | None):
    if dtype is not None:
        for key in ("pixel_values", "pixel_values_local"):
            if key in inputs:
                inputs[key] = inputs[key].to(dtype)
    return inputs


def builtin_session(request: SessionRequest) -> Session:
    """The command line's default session: this model at `request.builtin` size, `generate()` on one page or a
    batch of pages."""
    if not is_available():
        import transformers

        raise SessionError(f"the built-in model needs transformers 5.x with deepseek_ocr2; installed "
                           f"{transformers.__version__}. `pip install -U transformers` or pass --model.")
    if request.builtin not in SIZES:
        raise SessionError(f"no built-in size {request.builtin!r}: use one of {', '.join(SIZES)}")
    dtype = getattr(torch, request.dtype or "float32")
    model = build_model(request.builtin, dtype=dtype).to(request.device)
    processor = build_processor()
    prompt = DEFAULT_PROMPT if request.prompt is None else request.prompt
    try:
        if request.experts_implementation:
            model.set_experts_implementation(request.experts_implementation)
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionError(f"cannot prepare the built-in session: {exc}. Check --experts-implementation") from None

    def pages(images: tuple) -> Callable[[], Any]:
        try:
            inputs = prepare_batch(processor, [load_image(i) for i in images or (None,)], prompt, dtype)
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionError(f"cannot prepare the built-in session: {exc}. Check --prompt (one <image> tag)") \
                from None
        inputs = inputs.to(request.device)
        return lambda: model.generate(**inputs, max_new_tokens=request.max_new_tokens, do_sample=False)

    return Session(model, pages(request.images), f"built-in {request.builtin} random-weight DeepSeek-OCR 2",
                   page=lambda image: pages((image,)))
