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

Crop rule (facts, see :func:`expected_crops`)
---------------------------------------------
Global view 1024 (always, one per image); local tiles of 768 only when ``max(W, H) > 768``; grid
``cols x rows`` with ``2 <= cols*rows <= 6`` minimising ``|W/H - cols/rows|``; on an exact tie the grid
later in (area, cols) order wins only if ``W*H > 0.5 * 768**2 * cols * rows``. Image tokens per image:
``256 + 144*K + 1``.
"""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from typing import NamedTuple

import torch

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

# Vendor facts (DeepseekOcr2ImageProcessor / DeepseekOcr2Processor defaults).
GLOBAL_SIZE = 1024
TILE_SIZE = 768
MIN_TILES = 2
MAX_TILES = 6
PATCH_SIZE = 16
DOWNSAMPLE = 4
GLOBAL_TOKENS = (GLOBAL_SIZE // PATCH_SIZE // DOWNSAMPLE) ** 2  # 256
TILE_TOKENS = (TILE_SIZE // PATCH_SIZE // DOWNSAMPLE) ** 2  # 144

SIZES = ("tiny", "quarter")
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
def _size_dicts(size: str) -> tuple[dict, dict, dict]:
    if size == "tiny":
        sam = dict(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            global_attn_indexes=[1, 3],
            window_size=14,
            output_channels=16,
            downsample_channels=[24, 48],  # last one must equal the encoder width
            image_size=1024,
            patch_size=16,
        )
        enc = dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=16,  # unused (the encoder gets inputs_embeds)
            max_position_embeddings=2048,
        )
        n_layers = 3
        text = dict(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=32,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_shared_experts=1,
            mlp_layer_types=["dense"] + ["sparse"] * (n_layers - 1),
            max_position_embeddings=4096,
        )
    elif size == "quarter":
        sam = dict(
            hidden_size=192,
            num_hidden_layers=12,
            num_attention_heads=12,
            global_attn_indexes=[2, 5, 8, 11],
            window_size=14,
            output_channels=64,
            downsample_channels=[128, 224],
            image_size=1024,
            patch_size=16,
        )
        enc = dict(
            hidden_size=224,
            intermediate_size=1216,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=16,
            max_position_embeddings=2048,
        )
        n_layers = 12
        text = dict(
            vocab_size=129280,
            hidden_size=320,
            intermediate_size=1712,
            moe_intermediate_size=224,
            num_hidden_layers=n_layers,
            num_attention_heads=10,
            num_key_value_heads=10,
            n_routed_experts=64,
            num_experts_per_tok=6,
            n_shared_experts=2,
            mlp_layer_types=["dense"] + ["sparse"] * (n_layers - 1),
            max_position_embeddings=8192,
        )
    else:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    text.update(
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        topk_method="greedy",
    )
    return sam, enc, text


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
):
    """A random-weight ``DeepseekOcr2ForConditionalGeneration`` in eval mode.

    Weights are deterministic for a given ``seed`` (the global torch RNG is forked, not disturbed).
    ``experts_implementation``: None keeps the vendor default (``"grouped_mm"``; on CPU with torch >= 2.10 it
    runs ``torch.nn.functional.grouped_mm`` natively), or ``"eager"`` (a Python loop over the experts hit),
    ``"batched_mm"``, ``"grouped_mm"``. It is applied with ``model.set_experts_implementation`` and can be
    switched later the same way.
    """
    from transformers.models.deepseek_ocr2 import DeepseekOcr2ForConditionalGeneration

    config = tiny_config(size, attn_implementation=attn_implementation)
    with torch.random.fork_rng(devices=[]):
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


def experts_implementation_of(model) -> str | None:
    """The experts implementation the language model's MoE layers use (``"grouped_mm"``, ``"eager"``...)."""
    return model.config.text_config._experts_implementation


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
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    if dtype is not None:
        for key in ("pixel_values", "pixel_values_local"):
            if key in inputs:
                inputs[key] = inputs[key].to(dtype)
    return inputs


# ---------------------------------------------------------------------------------------------------------
# Synthetic inputs and expected crop plan
# ---------------------------------------------------------------------------------------------------------
def synthetic_page(width: int, height: int, seed: int = 0):
    """A PIL RGB image that looks like a document page: white, margins, lines of dark 'word' rectangles,
    an occasional heading and paragraph breaks. Deterministic for ``seed``."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (int(width), int(height)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    margin_x = max(4, int(width * 0.08))
    margin_y = max(4, int(height * 0.06))
    line_h = max(3, int(height / 60))
    gap = max(2, line_h // 2)
    y = margin_y
    first = True
    while y + line_h < height - margin_y:
        heading = first or rng.random() < 0.06
        h = int(line_h * 1.6) if heading else line_h
        if y + h >= height - margin_y:
            break
        x = margin_x
        right = width - margin_x if not heading else margin_x + int((width - 2 * margin_x) * rng.uniform(0.3, 0.6))
        if not heading and rng.random() < 0.15:  # last line of a paragraph
            right = margin_x + int((width - 2 * margin_x) * rng.uniform(0.2, 0.8))
        while x < right:
            w = max(2, int(line_h * rng.uniform(1.0, 5.0)))
            if x + w > right:
                break
            shade = rng.randint(0, 70)
            draw.rectangle([x, y, x + w, y + h - 1], fill=(shade, shade, shade))
            x += w + max(2, int(line_h * 0.6))
        y += h + gap
        if not heading and rng.random() < 0.12:  # paragraph break
            y += line_h
        first = False
    return img


class CropPlan(NamedTuple):
    """Crop plan of one image: grid ``cols x rows`` (0 x 0 without crops), ``num_crops`` K = cols*rows,
    and ``image_tokens`` = 256 + 144*K + 1."""

    cols: int
    rows: int
    num_crops: int
    image_tokens: int


def candidate_grids(min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES) -> list[tuple[int, int]]:
    """(cols, rows) with ``min_tiles <= cols*rows <= max_tiles``, ordered by area, then cols."""
    grids = [
        (c, r)
        for c in range(1, max_tiles + 1)
        for r in range(1, max_tiles + 1)
        if min_tiles <= c * r <= max_tiles
    ]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def expected_crops(
    width: int,
    height: int,
    tile: int = TILE_SIZE,
    min_tiles: int = MIN_TILES,
    max_tiles: int = MAX_TILES,
    exact: bool = False,
) -> CropPlan:
    """The crop plan computed from the stated rule, without calling the processor.

    No crops when ``max(W, H) <= tile``. Otherwise the grid minimising ``|W/H - cols/rows|``; on a tie the
    grid later in (area, cols) order replaces the current best only if ``W*H > 0.5 * tile**2 * cols * rows``.

    ``exact=False`` (default) compares the differences as Python floats, as the vendor code does, so that
    ties are float ties; ``exact=True`` uses rational arithmetic. They differ on a few sizes whose aspect ratio
    is exactly half-way between two grids but the float differences are not equal (e.g. 1105 x 2652: exact
    tie between 1x3 and 1x2, float picks 1x2; 8 of ~174 k sizes swept between 100 and 4000 px).
    """
    width, height = int(width), int(height)
    if max(width, height) <= tile:
        return CropPlan(0, 0, 0, GLOBAL_TOKENS + 1)
    aspect = Fraction(width, height) if exact else width / height
    area = width * height
    best, best_diff = None, None
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - (Fraction(cols, rows) if exact else cols / rows))
        if best_diff is None or diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and 2 * area > tile * tile * cols * rows:
            best = (cols, rows)
    cols, rows = best
    k = cols * rows
    return CropPlan(cols, rows, k, GLOBAL_TOKENS + TILE_TOKENS * k + 1)


def expected_image_tokens(num_crops: int) -> int:
    return GLOBAL_TOKENS + TILE_TOKENS * int(num_crops) + 1


__all__ = [
    "CropPlan",
    "DEFAULT_PROMPT",
    "IMAGE_TOKEN",
    "IMAGE_TOKEN_ID",
    "SIZES",
    "build_image_processor",
    "build_model",
    "build_processor",
    "build_tokenizer",
    "candidate_grids",
    "expected_crops",
    "expected_image_tokens",
    "experts_implementation_of",
    "is_available",
    "prepare_inputs",
    "synthetic_page",
    "tiny_config",
]
