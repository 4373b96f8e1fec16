"""InLine-Swin: Swin Transformer whose early stages use InLine global attention.

"Bridging the Divide: Reconsidering Softmax and Linear Attention" (Han et al., NeurIPS 2024),
official code LeapLabTHU/InLine ``models/inline_swin.py``. Layout and parameter names follow the
official model (patch merging at the END of each stage, as in the original Swin), so released
checkpoints load with ``strict=True``:

- ``I`` blocks: InLine attention over the whole stage map (the official configs use a window of 56,
  which covers every stage at 224, so they never shift or partition);
- ``S`` blocks: Swin window softmax attention with relative position bias; odd block indices of a
  stage are shifted by half a window when the map is larger than one window (the official rule);
- ``L`` blocks: plain (row-sum normalised) linear attention over the whole map, for the ablation.

``global_softmax=True`` makes the ``S`` blocks softmax attention over the whole stage map (no
windows, shift or relative position bias, like the I blocks): with ``attn_types='SSSS'`` the
all-softmax global counterpart of InLine-Swin, quadratic in the number of tokens.

Differences from the official code, on purpose: any input size (the image is padded to the patch
size, odd maps are padded before merging, window blocks pad to the window), InLine blocks see the
real map at every resolution, and the shift rule is applied to the map actually seen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from . import _helpers
from .attention import (
    GlobalAttention,
    WindowAttention,
    parse_attention_types,
    shifted_window_attention,
)
from .layers import PatchEmbed

__all__ = ["InLineSwin", "checkpoint_filter_fn"]


class PatchMerging(nn.Module):
    """2x2 merge with the official channel order (x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
    x[1::2, 1::2]), then LayerNorm(4C) and a bias-free Linear to 2C. Odd maps are zero-padded at
    the bottom / right, so the output is ceil(H / 2) x ceil(W / 2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _helpers.pad_hw(x, 2, 2, channels_last=True)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        return self.reduction(self.norm(x))


class InLineSwinBlock(nn.Module):
    """Pre-norm transformer block on a (B, H, W, C) map with global (InLine / linear) or window
    (softmax) attention."""

    def __init__(self, dim: int, num_heads: int, attn_type: str = "inline", window_size: int = 7,
                 shift: bool = False, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 kernel: str = "identity", inline_injective: bool = True,
                 inline_local: bool = True, global_softmax: bool = False):
        super().__init__()
        if attn_type == "softmax" and global_softmax:
            attn_type = "global_softmax"
        self.attn_type = attn_type
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        self.norm1 = nn.LayerNorm(dim)
        if attn_type == "softmax":
            self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias,
                                        attn_drop=attn_drop, proj_drop=proj_drop)
        elif attn_type == "global_softmax":
            self.attn = GlobalAttention(dim, num_heads, mode="softmax", qkv_bias=qkv_bias,
                                        attn_drop=attn_drop, proj_drop=proj_drop)
        elif attn_type == "inline":
            self.attn = GlobalAttention(dim, num_heads, mode="inline", qkv_bias=qkv_bias,
                                        attn_drop=attn_drop, proj_drop=proj_drop, kernel=kernel,
                                        injective=inline_injective, local=inline_local)
        else:
            self.attn = GlobalAttention(dim, num_heads, mode="linear", qkv_bias=qkv_bias,
                                        attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if self.attn_type == "softmax":
            # Shifted unless the map fits in one window (the official rule, applied there).
            return shifted_window_attention(x, self.attn, self.shift_size)
        return self.attn(x.reshape(b, h * w, c), (h, w)).view(b, h, w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class InLineSwinStage(nn.Module):
    """Blocks of one resolution, then (except in the last stage) patch merging, as officially."""

    def __init__(self, dim: int, num_heads: int, attn_types: Sequence[str],
                 drop_path: Sequence[float], downsample: bool, **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        # The official code shifts odd block indices of the stage (counting every block).
        self.blocks = nn.ModuleList([
            InLineSwinBlock(dim, num_heads, attn_type=t, shift=i % 2 == 1, drop_path=dp,
                            **block_kwargs)
            for i, (t, dp) in enumerate(zip(attn_types, drop_path, strict=True))])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _helpers.run_blocks(self.blocks, x, checkpointing=self.grad_checkpointing)
        return self.downsample(x) if self.downsample is not None else x


class InLineSwin(_helpers.ClassifierMixin, nn.Module):
    """InLine-Swin backbone / classifier (timm API).

    ``attn_types``: one letter per stage (I = InLine global, L = plain linear global, S = Swin
    window softmax), a string per block of a stage, or the official 'IIMS2' spelling.
    ``window_size`` is the window of the S blocks; ``global_softmax=True`` makes them attend over
    the whole stage map instead. ``kernel`` is InLine's phi.
    Features: stride 4 / 8 / 16 / 32 maps with embed_dim * (1, 2, 4, 8) channels, taken after
    each stage's blocks and before its patch merging.
    """

    # forward_features gives a channels-last map, as timm's Swin (timm reads this attribute).
    output_fmt = "NHWC"

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 4,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24),
                 attn_types: str | Sequence[str] = "IIIS", window_size: int = 7,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, ape: bool = False,
                 patch_norm: bool = True, kernel: str = "identity",
                 inline_injective: bool = True, inline_local: bool = True,
                 global_softmax: bool = False):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        _helpers.check_model_args(
            global_pool, self.global_pools, num_classes=num_classes, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            per_stage=dict(depths=depths, num_heads=num_heads),
            positive_ints=dict(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                               depths=depths, num_heads=num_heads, window_size=window_size),
            positive=dict(mlp_ratio=mlp_ratio), widths=dims, heads=num_heads)
        per_block = parse_attention_types(attn_types, depths)

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.embed_dims = dims
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_size = patch_size
        self.window_size = window_size
        img_hw = _helpers.to_pair(img_size, "img_size")
        self.patch_grid = (math.ceil(img_hw[0] / patch_size), math.ceil(img_hw[1] / patch_size))

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm=patch_norm)
        if ape:
            # Learned at ``img_size``; resampled to the grid of other inputs.
            self.absolute_pos_embed = nn.Parameter(
                torch.zeros(1, self.patch_grid[0] * self.patch_grid[1], embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)

        # Stochastic depth rises linearly over all blocks (CPU so that meta-device builds work).
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(InLineSwinStage(
                dims[i], num_heads[i], per_block[i], dpr[start:start + depth],
                downsample=i < self.num_layers - 1, window_size=window_size,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate,
                attn_drop=attn_drop_rate, kernel=kernel, inline_injective=inline_injective,
                inline_local=inline_local, global_softmax=global_softmax))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i,
                                          module=f"layers.{i}"))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_helpers.init_weights_trunc_normal)

    # ---- timm API ---------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = {n for n, _ in self.named_parameters()
                 if n.endswith("relative_position_bias_table")}
        if self.absolute_pos_embed is not None:
            names.add("absolute_pos_embed")
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        # Patch merging closes stage s, so it is grouped after the blocks of stage s.
        return dict(
            stem=r"^patch_embed|^absolute_pos_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^layers\.(\d+)\.downsample", (99998,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # The flag lives on the stages (their forward runs the blocks), as in timm's Swin.
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            b, h, w, c = x.shape
            pos = _helpers.pos_embed_for_grid(self.absolute_pos_embed, self.patch_grid, (h, w),
                                              num_prefix_tokens=0)
            x = x + pos.view(1, h, w, c).to(x.dtype)
        return self.pos_drop(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (before patch merging) as NCHW maps; ``norm`` applies the final norm to
        the last stage's map, as timm's Swin does."""
        _helpers.check_output_fmt(output_fmt, ("NCHW",))
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        last = len(self.layers) - 1
        stages = self.layers[:max_index + 1] if stop_early else self.layers
        intermediates = []
        x = self._embed(x)
        i = 0
        for i, stage in enumerate(stages):
            x = _helpers.run_blocks(stage.blocks, x, checkpointing=stage.grad_checkpointing)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None and i < len(stages) - 1:
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        if i == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        if prune_norm or max_index < len(self.layers) - 1:
            self.norm = nn.Identity()
        self.layers = self.layers[:max_index + 1]
        self.layers[-1].downsample = None  # nothing after the kept stages consumes it
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> normed (B, H/32, W/32, C) map (NHWC, like timm's Swin)."""
        x = self._embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)


def checkpoint_filter_fn(state_dict: dict, model: InLineSwin) -> dict[str, torch.Tensor]:
    """Official / training checkpoint -> this model's state dict (names are the official ones).

    Drops the official fixed-resolution ``attn_mask`` buffers (masks are built per input here),
    resizes relative position tables to the model's window and the absolute position embedding
    (``ape=True`` models) to the model's ``img_size`` grid.
    """
    sd = _helpers.unwrap_state_dict(state_dict)
    sd = {k: v for k, v in sd.items() if not re.search(r"(^|\.)attn_mask$", k)}
    pos = sd.get("absolute_pos_embed")
    if pos is not None and model.absolute_pos_embed is not None:
        sd["absolute_pos_embed"] = _helpers.resize_pos_embed_to(
            pos, model.absolute_pos_embed, num_prefix_tokens=0, new_hw=model.patch_grid)
    return _helpers.resize_rel_pos_tables(sd, model)


_cfg = partial(_helpers.default_cfg, "patch_embed.proj", pool_size=(7, 7),
               fixed_input_size=False, license="mit")


default_cfgs = generate_default_cfgs({
    "inline_swin_tiny.in1k": _cfg(),
    "inline_swin_small.in1k": _cfg(),
    "inline_swin_base.in1k": _cfg(),
})


def _create_inline_swin(variant: str, pretrained: bool = False, **kwargs) -> InLineSwin:
    depths = kwargs.get("depths", (2, 2, 6, 2))
    return _helpers.build_backbone(InLineSwin, variant, pretrained, checkpoint_filter_fn,
                                   tuple(range(len(depths))), **kwargs)


# Drop path 0.2 / 0.3 / 0.5 as in the Swin configs the InLine (and sister Agent-Attention)
# configs follow; the S-block window is max(7, 56 // 8) = 7 in the official configs.
@register_model
def inline_swin_tiny(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-T: 29.22M params, 82.4 top-1 (official)."""
    args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), attn_types="IIIS",
                drop_path_rate=0.2)
    return _create_inline_swin("inline_swin_tiny", pretrained, **dict(args, **kwargs))


@register_model
def inline_swin_small(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-S: 49.79M params, 83.6 top-1 (official)."""
    args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), attn_types="IISS",
                drop_path_rate=0.3)
    return _create_inline_swin("inline_swin_small", pretrained, **dict(args, **kwargs))


@register_model
def inline_swin_base(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B: 88.35M params, 84.1 top-1 (official). Stage 3: 2 InLine then 16 softmax."""
    args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                attn_types="IIMS2", drop_path_rate=0.5)
    return _create_inline_swin("inline_swin_base", pretrained, **dict(args, **kwargs))
