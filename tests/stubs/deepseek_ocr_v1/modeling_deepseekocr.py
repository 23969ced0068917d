"""Stub of DeepSeek-OCR v1 ``modeling_deepseekocr.py``: DeepseekOCRModel / DeepseekOCRForCausalLM, greedy
``generate`` and an ``infer`` that builds synthetic inputs like the vendor's ``infer``.

Test double written from docs/models/deepseek-ocr-v1.md (class names, attribute names, call order, token
counts and crop-grid rule). Loaded under a dynamic package name by ``load_stub_model``; siblings are imported
relative to that package, as Hugging Face remote code is. Not vendor code. Differences from the vendor that
matter for CPU tests: no ``.cuda()`` calls, no bf16 autocast, no weight-init disabling helper.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .configuration_deepseek_v2 import StubConfig
from .deepencoder import MlpProjector, build_clip_l, build_sam_vit_b
from .modeling_deepseekv2 import DeepseekV2ForCausalLM, DeepseekV2Model

CROP_SIZE = 640  # local crops are always 640x640 (the vendor does not pass image_size on)
TOKENS_PER_CROP_SIDE = CROP_SIZE // 64  # 10 -> 100 tokens per crop
IMAGE_TAG = "<image>"

# mode name -> infer() keyword arguments (base_size, image_size_mode = vendor ``image_size``, crop_mode)
MODES: Dict[str, dict] = {
    "tiny": dict(base_size=512, image_size_mode=512, crop_mode=False),
    "small": dict(base_size=640, image_size_mode=640, crop_mode=False),
    "base": dict(base_size=1024, image_size_mode=1024, crop_mode=False),
    "large": dict(base_size=1280, image_size_mode=1280, crop_mode=False),
    "gundam": dict(base_size=1024, image_size_mode=640, crop_mode=True),
}


# --------------------------------------------------------------------------------------------------------------
# Plain functions (tests use them to compute expectations)
# --------------------------------------------------------------------------------------------------------------
def candidate_grids(min_num: int = 2, max_num: int = 9) -> List[Tuple[int, int]]:
    """All (w, h) with min_num <= w*h <= max_num, in order of increasing w*h."""
    grids = {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if min_num <= i * j <= max_num}
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_crop_grid(width: int, height: int, image_size: int = CROP_SIZE, min_num: int = 2,
                     max_num: int = 9) -> Tuple[int, int]:
    """Crop grid (w, h) for an image of ``width`` x ``height`` in crop mode (call it only when a side > 640).

    Grids are tried in order of increasing w*h; the aspect ratio closest to the image's wins; on an exact tie a
    later (larger) grid wins only if width*height > 0.5 * image_size^2 * w * h."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    area = width * height
    for w, h in candidate_grids(min_num, max_num):
        diff = abs(aspect - w / h)
        if diff < best_diff:
            best, best_diff = (w, h), diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * w * h:
            best = (w, h)
    return best


def plan_image(width: Optional[int], height: Optional[int], base_size: int = 1024, image_size_mode: int = 640,
               crop_mode: bool = True) -> dict:
    """What infer() feeds the model for one image: crop grid, crop count, global view size and positions."""
    if width is None or height is None:
        return dict(grid=(1, 1), crops=0, global_size=base_size, n_global=0, positions=0, text_only=True)
    if crop_mode:
        global_size = base_size
        if width <= CROP_SIZE and height <= CROP_SIZE:
            grid = (1, 1)
        else:
            grid = choose_crop_grid(width, height, image_size=CROP_SIZE)
    else:
        global_size = image_size_mode
        grid = (1, 1)
    n = global_size // 64
    positions = (n + 1) * n + 1
    crops = 0
    if grid[0] * grid[1] > 1:
        crops = grid[0] * grid[1]
        t = TOKENS_PER_CROP_SIDE
        positions += (t * grid[0] + 1) * (t * grid[1])
    return dict(grid=grid, crops=crops, global_size=global_size, n_global=n, positions=positions,
                text_only=False)


def image_positions(width: int, height: int, base_size: int = 1024, image_size_mode: int = 640,
                    crop_mode: bool = True) -> int:
    """Number of image positions in the LLM sequence (Gundam 1400x900 -> 893, Base -> 273, ...)."""
    return plan_image(width, height, base_size, image_size_mode, crop_mode)["positions"]


def _encode_text(text: str, tokenizer, config) -> List[int]:
    if not text:
        return []
    if tokenizer is not None:
        return list(tokenizer.encode(text, add_special_tokens=False))
    span = max(1, min(config.image_token_id, config.vocab_size) - 3 - 8)
    return [3 + (ord(c) % span) for c in text]


def build_infer_inputs(config, tokenizer=None, prompt: str = IMAGE_TAG + "\nFree OCR. ",
                       image_size: Optional[Sequence[int]] = None, base_size: int = 1024,
                       image_size_mode: int = 640, crop_mode: bool = True, seed: int = 0) -> dict:
    """Synthetic version of the vendor's preprocessing: returns the generate() inputs and the plan."""
    width, height = (None, None) if image_size is None else (int(image_size[0]), int(image_size[1]))
    plan = plan_image(width, height, base_size, image_size_mode, crop_mode)
    if prompt.count(IMAGE_TAG) > 1:
        raise ValueError("the stub supports at most one <image> tag")
    before, _, after = prompt.partition(IMAGE_TAG) if IMAGE_TAG in prompt else (prompt, "", "")

    ids = [config.bos_token_id] + _encode_text(before, tokenizer, config)
    seq_mask = [False] * len(ids)
    ids += [config.image_token_id] * plan["positions"]
    seq_mask += [True] * plan["positions"]
    tail = _encode_text(after, tokenizer, config)
    ids += tail
    seq_mask += [False] * len(tail)

    gen = torch.Generator().manual_seed(seed)
    g = plan["global_size"]
    if plan["text_only"]:
        patches = torch.zeros(1, 3, CROP_SIZE, CROP_SIZE)
        image_ori = torch.zeros(1, 3, g, g)
    else:
        # values in [-0.9, 1.0): nonzero sums, like a normalized image
        image_ori = torch.rand(1, 3, g, g, generator=gen) * 1.9 - 0.9
        if plan["crops"]:
            patches = torch.rand(plan["crops"], 3, CROP_SIZE, CROP_SIZE, generator=gen) * 1.9 - 0.9
        else:
            patches = torch.zeros(1, 3, CROP_SIZE, CROP_SIZE)
    grid = plan["grid"] if plan["crops"] else (1, 1)
    input_ids = torch.tensor([ids], dtype=torch.long)
    return dict(
        input_ids=input_ids,
        images=[(patches, image_ori)],
        images_seq_mask=torch.tensor([seq_mask], dtype=torch.bool),
        images_spatial_crop=torch.tensor([list(grid)], dtype=torch.long),
        attention_mask=torch.ones_like(input_ids),
        plan=plan,
    )


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------
class DeepseekOCRModel(DeepseekV2Model):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.sam_model = build_sam_vit_b(config)
        self.vision_model = build_clip_l(config)
        self.projector = MlpProjector(2 * config.clip_width, config.hidden_size)
        std = 1.0 / torch.sqrt(torch.tensor(float(config.hidden_size)))
        self.image_newline = nn.Parameter(torch.randn(config.hidden_size) * std)
        self.view_seperator = nn.Parameter(torch.randn(config.hidden_size) * std)

    def _encode_view(self, pixels: torch.Tensor) -> torch.Tensor:
        """sam_model -> vision_model -> projector for one view batch: [N, 3, S, S] -> [N, (S/64)^2, hidden]."""
        sam_out = self.sam_model(pixels)  # [N, C, s, s]
        clip_out = self.vision_model(pixels, sam_out)  # [N, 1 + s*s, C]
        features = torch.cat([clip_out[:, 1:], sam_out.flatten(2).permute(0, 2, 1)], dim=-1)  # [N, s*s, 2C]
        return self.projector(features)

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """[rows, cols, hidden] -> [rows * (cols + 1), hidden] with image_newline closing every row."""
        rows, _, dim = grid.shape
        nl = self.image_newline.to(grid.dtype)[None, None, :].expand(rows, 1, dim)
        return torch.cat([grid, nl], dim=1).reshape(-1, dim)

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values=None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        images=None,
        images_seq_mask: Optional[torch.BoolTensor] = None,
        images_spatial_crop: Optional[torch.LongTensor] = None,
        return_dict: Optional[bool] = None,
    ):
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        seq_len = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]

        if (
            self.sam_model is not None
            and images is not None
            and (seq_len != 1 or self.training)
            and torch.sum(images[0][1]).item() != 0
        ):
            idx = 0
            for image, crop_shape in zip(images, images_spatial_crop):
                patches, image_ori = image[0], image[1]
                dim = self.config.hidden_size
                if torch.sum(patches).item() != 0:
                    w_crop, h_crop = int(crop_shape[0]), int(crop_shape[1])
                    local = self._encode_view(patches)  # local first ...
                    glob = self._encode_view(image_ori)  # ... then global
                    n = int(round(glob.shape[1] ** 0.5))
                    t = int(round(local.shape[1] ** 0.5))
                    local_grid = (
                        local.view(h_crop, w_crop, t, t, dim).permute(0, 2, 1, 3, 4).reshape(h_crop * t, w_crop * t, dim)
                    )
                    parts = [
                        self._with_newlines(glob.view(n, n, dim)),
                        self._with_newlines(local_grid),
                        self.view_seperator.to(glob.dtype)[None, :],
                    ]
                else:
                    glob = self._encode_view(image_ori)
                    n = int(round(glob.shape[1] ** 0.5))
                    parts = [self._with_newlines(glob.view(n, n, dim)), self.view_seperator.to(glob.dtype)[None, :]]
                features = torch.cat(parts, dim=0).to(inputs_embeds.dtype)
                mask = images_seq_mask[idx]
                n_pos = int(mask.sum())
                if n_pos != features.shape[0]:
                    raise ValueError(
                        f"sample {idx}: images_seq_mask has {n_pos} image positions but the vision path produced "
                        f"{features.shape[0]} features"
                    )
                inputs_embeds[idx].masked_scatter_(mask.unsqueeze(-1), features)
                idx += 1

        return super().forward(
            input_ids=None,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )


class DeepseekOCRForCausalLM(DeepseekV2ForCausalLM):
    model_class = DeepseekOCRModel

    def prepare_infer_inputs(self, tokenizer=None, prompt: str = IMAGE_TAG + "\nFree OCR. ",
                             image_size: Optional[Sequence[int]] = None, base_size: int = 1024,
                             image_size_mode: int = 640, crop_mode: bool = True, seed: int = 0) -> dict:
        return build_infer_inputs(self.config, tokenizer, prompt, image_size, base_size, image_size_mode,
                                  crop_mode, seed)

    def infer(self, tokenizer, prompt: str = "", image_file: str = "", output_path: str = "", base_size: int = 1024,
              image_size: int = 640, crop_mode: bool = True, test_compress: bool = False, save_results: bool = False,
              eval_mode: bool = False):
        """The vendor's signature and behaviour (docs/models/deepseek-ocr-v1.md#infer): the first image of the
        prompt is indexed (IndexError on a text-only prompt), the inputs are moved with `.cuda()` (all but the crop
        grid), the images are bfloat16, and `generate` is asked for 8192 new tokens."""
        from PIL import Image

        images = [Image.open(image_file).convert("RGB")] if IMAGE_TAG in prompt else []
        width, height = images[0].size  # the vendor indexes the first image: IndexError without one
        inputs = self.prepare_infer_inputs(tokenizer, prompt, (width, height), base_size, image_size, crop_mode)
        inputs.pop("plan")
        (patches, image_ori), = inputs["images"]
        images = [(patches.to(torch.bfloat16).cuda(), image_ori.to(torch.bfloat16).cuda())]
        sequences = self.generate(input_ids=inputs["input_ids"].cuda(), images=images,
                                  images_seq_mask=inputs["images_seq_mask"].cuda(),
                                  images_spatial_crop=inputs["images_spatial_crop"], max_new_tokens=8192,
                                  eos_token_id=self.config.eos_token_id, use_cache=True,
                                  no_repeat_ngram_size=35 if eval_mode else 20)
        return str(sequences[0, inputs["input_ids"].shape[1]:].tolist()) if eval_mode else None

    def infer_synthetic(
        self,
        tokenizer=None,
        prompt: str = IMAGE_TAG + "\nFree OCR. ",
        image_size: Optional[Sequence[int]] = None,
        base_size: int = 1024,
        image_size_mode: int = 640,
        crop_mode: bool = True,
        max_new_tokens: int = 4,
        eos_token_id: Optional[int] = None,
        seed: int = 0,
    ) -> torch.LongTensor:
        """Vendor-like infer on a synthetic image of ``image_size`` = (W, H) (None: text only, zero images).
        Returns the generated sequences (prompt + new tokens)."""
        inputs = self.prepare_infer_inputs(tokenizer, prompt, image_size, base_size, image_size_mode, crop_mode,
                                           seed)
        inputs.pop("plan")
        return self.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, use_cache=True)


__all__ = [
    "CROP_SIZE",
    "MODES",
    "StubConfig",
    "DeepseekOCRModel",
    "DeepseekOCRForCausalLM",
    "build_infer_inputs",
    "candidate_grids",
    "choose_crop_grid",
    "image_positions",
    "plan_image",
]
