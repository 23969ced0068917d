"""Stub of DeepSeek-OCR v1 ``deepencoder.py``: SAM ViT-B encoder, CLIP-L ViT and the MLP projector.

Test double written from the facts in docs/models/deepseek-ocr-v1.md: same class names, attribute names and
call order as the vendor, tiny widths read from the config. Not vendor code.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


# CLIP's activation is a module-level TorchScript function. Callers look the name up at call time, so rebinding
# ``deepencoder.quick_gelu`` to a plain Python function changes what the MLP runs.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)

    @torch.jit.script
    def quick_gelu(x):
        return x * torch.sigmoid(1.702 * x)


# --------------------------------------------------------------------------------------------------------------
# SAM ViT-B
# --------------------------------------------------------------------------------------------------------------
class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of an NCHW tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, 3, H, W] -> [B, H/16, W/16, C]
        return self.proj(x).permute(0, 2, 3, 1)


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class Attention(nn.Module):
    """Multi-head attention over a [B, H, W, C] grid (SDPA; no relative position terms in the stub)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, h*w, head_dim]
        out = out.permute(0, 2, 1, 3).reshape(b, h, w, c)
        return self.proj(out)


def window_partition(x: torch.Tensor, window_size: int):
    """[B, H, W, C] -> [B * nWin, ws, ws, C] (windows folded into the batch), padded to a multiple of ws."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(windows: torch.Tensor, window_size: int, pad_hw, hw) -> torch.Tensor:
    hp, wp = pad_hw
    h, w = hw
    n_win = (hp // window_size) * (wp // window_size)
    b = windows.shape[0] // n_win
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


class Block(nn.Module):
    """SAM transformer block; ``window_size`` 0 means global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        x = shortcut + x
        x = x + self.mlp(self.norm2(x))
        return x


def get_abs_pos_sam(abs_pos: torch.Tensor, hw) -> torch.Tensor:
    """Bicubic-resize the [1, G, G, C] absolute position grid to [1, h, w, C] when the input is not 1024^2."""
    h, w = hw
    if abs_pos.shape[1] == h and abs_pos.shape[2] == w:
        return abs_pos
    pos = F.interpolate(abs_pos.permute(0, 3, 1, 2).float(), size=(h, w), mode="bicubic", align_corners=False)
    return pos.permute(0, 2, 3, 1).to(abs_pos.dtype)


class ImageEncoderViT(nn.Module):
    """SAM ViT-B; ``net_3`` emits ``out_chans`` channels (default the CLIP width; DeepSeek-OCR 2: its encoder's)."""

    def __init__(self, config, out_chans=None) -> None:
        super().__init__()
        c = config.sam_width
        grid = config.sam_img_size // config.sam_patch_size
        self.img_size = config.sam_img_size
        self.patch_embed = PatchEmbed(config.sam_patch_size, 3, c)
        self.pos_embed = nn.Parameter(torch.randn(1, grid, grid, c) * 0.02)
        self.blocks = nn.ModuleList()
        for i in range(config.sam_depth):
            ws = 0 if i in tuple(config.sam_global_attn_indexes) else config.sam_window_size
            self.blocks.append(Block(c, config.sam_heads, config.sam_mlp_ratio, ws))
        nc = config.sam_neck_chans
        self.neck = nn.Sequential(
            nn.Conv2d(c, nc, kernel_size=1, bias=False),
            LayerNorm2d(nc),
            nn.Conv2d(nc, nc, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(nc),
        )
        self.net_2 = nn.Conv2d(nc, config.sam_net2_chans, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(config.sam_net2_chans, out_chans or config.clip_width, kernel_size=3, stride=2,
                               padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, 3, S, S] -> [B, clip_width, S/64, S/64]  (640 -> 10x10, 1024 -> 16x16)
        x = self.patch_embed(x)
        x = x + get_abs_pos_sam(self.pos_embed, (x.shape[1], x.shape[2]))
        for blk in self.blocks:
            x = blk(x)
        x = self.neck(x.permute(0, 3, 1, 2))
        x = self.net_2(x)
        x = self.net_3(x)
        return x


def build_sam_vit_b(config) -> ImageEncoderViT:
    return ImageEncoderViT(config)


# --------------------------------------------------------------------------------------------------------------
# CLIP-L (takes SAM's output as its patch embeddings)
# --------------------------------------------------------------------------------------------------------------
class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        w = config.clip_width
        self.embed_dim = w
        self.class_embedding = nn.Parameter(torch.randn(w) * 0.02)
        self.patch_embedding = nn.Conv2d(3, w, kernel_size=config.clip_patch_size, stride=config.clip_patch_size,
                                         bias=False)
        self.num_patches = (config.clip_image_size // config.clip_patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Embedding(self.num_positions, w)
        self.register_buffer("position_ids", torch.arange(self.num_positions).unsqueeze(0), persistent=False)

    def _positions(self, n_tokens: int) -> torch.Tensor:
        pos = self.position_embedding(self.position_ids)  # [1, 1 + G*G, w]
        if n_tokens == self.num_positions:
            return pos
        cls_pos, grid_pos = pos[:, :1], pos[:, 1:]
        g = int(math.isqrt(grid_pos.shape[1]))
        side = int(math.isqrt(n_tokens - 1))
        grid_pos = grid_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
        grid_pos = F.interpolate(grid_pos, size=(side, side), mode="bicubic", align_corners=False)
        grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, side * side, -1).to(pos.dtype)
        return torch.cat([cls_pos, grid_pos], dim=1)

    def forward(self, pixel_values: torch.Tensor, patch_embeds: torch.Tensor = None) -> torch.Tensor:
        if patch_embeds is None:
            patch_embeds = self.patch_embedding(pixel_values)
        b = patch_embeds.shape[0]
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)  # [B, T, w]
        cls = self.class_embedding.to(patch_embeds.dtype).expand(b, 1, -1)
        emb = torch.cat([cls, patch_embeds], dim=1)
        return emb + self._positions(emb.shape[1])


class NoTPAttention(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        w = config.clip_width
        self.num_heads = config.clip_heads
        self.head_dim = w // self.num_heads
        self.qkv_proj = nn.Linear(w, 3 * w)
        self.out_proj = nn.Linear(w, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        qkv = self.qkv_proj(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, w)
        return self.out_proj(out)


class NoTPFeedForward(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        w = config.clip_width
        self.fc1 = nn.Linear(w, int(w * config.clip_mlp_ratio))
        self.fc2 = nn.Linear(int(w * config.clip_mlp_ratio), w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``quick_gelu`` is resolved from this module's globals at call time (rebinding works).
        return self.fc2(quick_gelu(self.fc1(x)))


class NoTPTransformerBlock(nn.Module):
    def __init__(self, config, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.layer_norm1 = nn.LayerNorm(config.clip_width, eps=1e-5)
        self.self_attn = NoTPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.clip_width, eps=1e-5)
        self.mlp = NoTPFeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        x = x + self.mlp(self.layer_norm2(x))
        return x


class NoTPTransformer(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.layers = nn.ModuleList([NoTPTransformerBlock(config, i) for i in range(config.clip_layers)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class VitModel(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.transformer = NoTPTransformer(config)
        self.pre_layrnorm = nn.LayerNorm(config.clip_width, eps=1e-5)

    def forward(self, x: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
        # returns [N, 1 + tokens, width]; the caller drops the class token
        h = self.embeddings(x, patch_embeds)
        h = self.pre_layrnorm(h)
        return self.transformer(h)


def build_clip_l(config) -> VitModel:
    return VitModel(config)


# --------------------------------------------------------------------------------------------------------------
# Projector
# --------------------------------------------------------------------------------------------------------------
class MlpProjector(nn.Module):
    """``projector_type = linear``: one Linear(2 * clip_width -> hidden)."""

    def __init__(self, input_dim: int, n_embed: int) -> None:
        super().__init__()
        self.layers = nn.Linear(input_dim, n_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
