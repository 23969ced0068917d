"""Stub of DeepSeek-OCR 2's ``modeling_deepseekocr2.py``: DeepseekOCR2Model / DeepseekOCR2ForCausalLM and ``infer``.

Test double written from docs/models/deepseek-ocr2-remote.md (names, classes, call order, crop grid, image tokens,
``infer``); not vendor code. Loaded under a dynamic package name by ``load_stub_model``. Differences from the vendor
that matter for CPU tests: the forward makes no ``.cuda()`` call (``infer`` does, as the vendor's), no banner is
printed, and ``infer`` leaves weight initialisation alone.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .configuration_deepseek_v2 import StubConfig
from .deepencoderv2 import MlpProjector, build_qwen2_decoder_as_encoder, build_sam_vit_b
from .modeling_deepseekv2 import DeepseekV2ForCausalLM, DeepseekV2Model

CROP_SIZE = 768  # crops are always 768x768, whatever image_size says (the vendor does not pass it to the cropper)
IMAGE_TAG = "<image>"
# (w, h) grids tried by increasing w*h; within one product in the order observed (the vendor iterates a set)
CANDIDATE_GRIDS = ((1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1), (6, 1), (2, 3), (1, 6),
                   (3, 2))


class DeepseekOCR2Config(StubConfig):
    """The vendor's config class (its LLM fields are DeepseekV2's, unchanged from v1)."""

    model_type = "DeepseekOCR2"


def choose_crop_grid(width: int, height: int) -> Tuple[int, int]:
    """The grid of a page with a side > 768: the closest aspect ratio; on an exact tie a later grid wins only if
    width*height > 0.5 * 768^2 * w * h."""
    best, best_diff = (1, 1), float("inf")
    for w, h in CANDIDATE_GRIDS:
        diff = abs(width / height - w / h)
        if diff < best_diff:
            best, best_diff = (w, h), diff
        elif diff == best_diff and width * height > 0.5 * CROP_SIZE * CROP_SIZE * w * h:
            best = (w, h)
    return best


def plan_image(width: int, height: int, base_size: int = 1024, image_size: int = 640, crop_mode: bool = True) -> dict:
    """What ``infer`` feeds the model for one page: grid, crops, global view size and image positions. The prompt
    reserves (image_size/64)^2 positions per crop although every crop gives 144 features: the crop-size trap."""
    grid = (1, 1)
    if crop_mode and (width > CROP_SIZE or height > CROP_SIZE):
        grid = choose_crop_grid(width, height)
    crops = grid[0] * grid[1] if grid != (1, 1) else 0
    global_size = base_size if crop_mode else image_size
    positions = (global_size // 64) ** 2 + 1 + crops * (image_size // 64) ** 2
    return dict(grid=grid, crops=crops, global_size=global_size, positions=positions)


def _encode_text(text: str, tokenizer, config) -> List[int]:
    if tokenizer is not None:
        return list(tokenizer.encode(text, add_special_tokens=False)) if text else []
    span = config.image_token_id - 3 - 8
    return [3 + (ord(c) % span) for c in text]


def build_infer_inputs(config, tokenizer=None, prompt: str = IMAGE_TAG + "\nFree OCR. ",
                       page: Optional[Sequence[int]] = None, base_size: int = 1024, image_size: int = 640,
                       crop_mode: bool = True, seed: int = 0) -> dict:
    """The ``generate`` inputs ``infer`` builds for a synthetic page of ``page`` = (W, H) pixels (None: text only,
    zero images): BOS, the text, the image positions in place of the tag; the prompt stripped (``plain`` template)."""
    before, tag, after = prompt.strip().partition(IMAGE_TAG)
    plan = plan_image(*page, base_size, image_size, crop_mode) if page and tag else None
    positions = plan["positions"] if plan else 0
    ids = [config.bos_token_id] + _encode_text(before, tokenizer, config)
    mask = [False] * len(ids) + [True] * positions
    ids += [config.image_token_id] * positions
    tail = _encode_text(after, tokenizer, config)
    ids, mask = ids + tail, mask + [False] * len(tail)
    gen = torch.Generator().manual_seed(seed)
    g = plan["global_size"] if plan else base_size
    crops = torch.zeros(1, 3, CROP_SIZE, CROP_SIZE)  # the no-crop placeholder: one zero image
    global_view = torch.zeros(1, 3, g, g)
    if plan:
        global_view = torch.rand(1, 3, g, g, generator=gen) * 1.9 - 0.9
        if plan["crops"]:
            crops = torch.rand(plan["crops"], 3, CROP_SIZE, CROP_SIZE, generator=gen) * 1.9 - 0.9
    input_ids = torch.tensor([ids], dtype=torch.long)
    return dict(input_ids=input_ids, images=[(crops, global_view)], images_seq_mask=torch.tensor([mask]),
                images_spatial_crop=torch.tensor([list(plan["grid"] if plan else (1, 1))], dtype=torch.long),
                attention_mask=torch.ones_like(input_ids), plan=plan)


class DeepseekOCR2Model(DeepseekV2Model):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.sam_model = build_sam_vit_b()  # looked up in this module's globals at call time
        self.qwen2_model = build_qwen2_decoder_as_encoder()
        self.projector = MlpProjector(self.qwen2_model.query_768.embedding_dim, config.hidden_size)
        std = 1.0 / config.hidden_size ** 0.5
        self.view_seperator = nn.Parameter(torch.randn(config.hidden_size) * std)  # vendor spelling; no newline

    def _encode_view(self, pixels: torch.Tensor) -> torch.Tensor:
        """sam_model -> qwen2_model -> projector for one view batch: [N, 3, S, S] -> [N, (S/64)^2, hidden]."""
        return self.projector(self.qwen2_model(self.sam_model(pixels)))

    def _features(self, crops: torch.Tensor, global_view: torch.Tensor) -> torch.Tensor:
        """One sample's rows: [P x 144 crop rows, 256 global rows, separator]; crops first, then the global view."""
        parts = []
        if torch.sum(crops).item() != 0:  # decided by the crops' values, not by images_spatial_crop
            parts.append(self._encode_view(crops).flatten(0, 1))
        glob = self._encode_view(global_view)
        return torch.cat(parts + [glob[0], self.view_seperator.to(glob.dtype)[None]], dim=0)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, images=None, images_seq_mask=None,
                images_spatial_crop=None, return_dict=None):
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if (self.sam_model is not None and images is not None and (inputs_embeds.shape[1] != 1 or self.training)
                and torch.sum(images[0][1]).item() != 0):
            with torch.no_grad():
                for idx, ((crops, global_view), _grid) in enumerate(zip(images, images_spatial_crop)):
                    features = self._features(crops, global_view).to(inputs_embeds.dtype)
                    # the masked scatter fills the image positions in order; rows that do not fit are dropped
                    inputs_embeds[idx].masked_scatter_(images_seq_mask[idx].unsqueeze(-1), features)
        return super().forward(input_ids=None, attention_mask=attention_mask, past_key_values=past_key_values,
                               inputs_embeds=inputs_embeds, use_cache=use_cache, position_ids=position_ids,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                               return_dict=return_dict)


class DeepseekOCR2ForCausalLM(DeepseekV2ForCausalLM):
    model_class = DeepseekOCR2Model

    def prepare_infer_inputs(self, tokenizer=None, prompt: str = IMAGE_TAG + "\nFree OCR. ", page=None,
                             base_size: int = 1024, image_size: int = 640, crop_mode: bool = True, seed: int = 0) -> dict:
        return build_infer_inputs(self.config, tokenizer, prompt, page, base_size, image_size, crop_mode, seed)

    def infer(self, tokenizer, prompt: str = "", image_file: str = "", output_path: str = "", base_size: int = 1024,
              image_size: int = 640, crop_mode: bool = True, test_compress: bool = False, save_results: bool = False,
              eval_mode: bool = False):
        """The vendor's signature and behaviour (docs/models/deepseek-ocr2-remote.md#infer): ``output_path`` and its
        ``images`` folder are made; the first image of the prompt is indexed (IndexError on a text-only prompt); the
        inputs are moved with ``.cuda()`` (all but the crop grid); the images are bfloat16; ``generate`` is asked
        for 8192 new tokens, greedy; eval_mode returns the continuation, otherwise None."""
        from PIL import Image, ImageOps

        os.makedirs(os.path.join(output_path, "images"), exist_ok=True)
        images = [ImageOps.exif_transpose(Image.open(image_file)).convert("RGB")] if IMAGE_TAG in prompt else []
        inputs = self.prepare_infer_inputs(tokenizer, prompt, images[0].size, base_size, image_size, crop_mode)
        (crops, global_view), = inputs["images"]
        images = [(crops.to(torch.bfloat16).cuda(), global_view.to(torch.bfloat16).cuda())]
        sequences = self.generate(input_ids=inputs["input_ids"].cuda(), images=images,
                                  images_seq_mask=inputs["images_seq_mask"].cuda(),
                                  images_spatial_crop=inputs["images_spatial_crop"], temperature=0.0,
                                  eos_token_id=self.config.eos_token_id, max_new_tokens=8192,
                                  no_repeat_ngram_size=35 if eval_mode else 20, use_cache=True)
        return str(sequences[0, inputs["input_ids"].shape[1]:].tolist()) if eval_mode else None
