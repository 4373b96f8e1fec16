"""InLine-PVT: PVT (v1) with InLine attention in every stage.

Han et al., "Bridging the Divide: Reconsidering Softmax and Linear Attention", NeurIPS 2024.
Layout and parameter names follow the official ``models/inline_pvt.py`` (LeapLabTHU/InLine) so
its released checkpoints load: ``patch_embed{k}.{proj, norm}``, ``pos_embed{k}``,
``block{k}.{i}.{norm1, attn.q, attn.kv, attn.proj, attn.residual, norm2, mlp.fc1, mlp.fc2}``,
``head``; no cls token and no final norm (the head averages the last stage's tokens).
InLine blocks attend over the full stage map (spatial reduction 1); softmax blocks ('S', the PVT
baseline) keep PVT's spatial reduction of keys/values (``attn.sr``, ``attn.norm``).
Any input size works: each patch embedding zero-pads its input to a multiple of its stride and the
learned position embeddings are resampled to the real grid of every stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from . import _helpers
from .attention import GlobalAttention, parse_attention_types, softmax_attention
from .layers import PatchEmbed, TokenBlock

__all__ = ["InLinePVT", "checkpoint_filter_fn"]


class SpatialReductionAttention(GlobalAttention):
    """PVT's softmax attention with keys/values from a map reduced by ``sr_ratio`` (strided conv
    + LayerNorm), the official 'S' baseline. The map is zero-padded to a multiple of the ratio so
    every token reaches a key. Projections and kernel are GlobalAttention's."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, mode="softmax", qkv_bias=qkv_bias, attn_drop=attn_drop,
                         proj_drop=proj_drop, split_kv=True)
        self.sr_ratio = sr_ratio
        self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int],
                mean_source: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, hw[0], hw[1])
        reduced = self.sr(_helpers.pad_to_multiple(grid, self.sr_ratio)).flatten(2).transpose(1, 2)
        reduced = self.norm(reduced)
        k, v = self.kv(reduced).chunk(2, dim=-1)
        out = softmax_attention(self._heads(self.q(x)), self._heads(k), self._heads(v),
                                dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class InLinePVT(_helpers.ClassifierMixin, nn.Module):
    """Four-stage pyramid (strides 4/8/16/32) with per-stage learned position embeddings.

    ``attn_types``: one letter per stage ('IIII'), or per block within a stage as a list;
    I = InLine, L = plain linear, S = softmax with PVT's spatial reduction ``sr_ratios``.
    ``img_size`` is the construction resolution: it fixes the stored position-embedding grids;
    inputs of any size run.
    """

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int = 4,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 embed_dims: Sequence[int] = (64, 128, 320, 512),
                 num_heads: Sequence[int] = (2, 4, 10, 16),
                 mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 depths: Sequence[int] = (2, 2, 2, 2), sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 attn_types: str | Sequence[str] = "IIII", inline_injective: bool = True,
                 inline_local: bool = True, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1):
        super().__init__()
        img_size = _helpers.to_pair(img_size, "img_size")
        _helpers.check_model_args(
            global_pool, self.global_pools, num_classes=num_classes, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            per_stage=dict(depths=depths, embed_dims=embed_dims, num_heads=num_heads,
                           mlp_ratios=mlp_ratios, sr_ratios=sr_ratios),
            positive_ints=dict(patch_size=patch_size, in_chans=in_chans, depths=depths,
                               embed_dims=embed_dims, num_heads=num_heads, sr_ratios=sr_ratios),
            positive=dict(mlp_ratios=mlp_ratios), widths=embed_dims, heads=num_heads)
        num_stages = len(depths)
        types = parse_attention_types(attn_types, depths)

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_stages = num_stages
        self.depths = tuple(depths)
        self.embed_dims = tuple(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        # Stored position-embedding grids, as the official model sizes them at img_size.
        grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.grid_sizes = [grid]
        for _ in range(1, num_stages):
            grid = (grid[0] // 2, grid[1] // 2)
            self.grid_sizes.append(grid)

        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # meta-device safe
        cur = 0
        for i in range(num_stages):
            gh, gw = self.grid_sizes[i]
            # LayerNorm eps 1e-5: the official patch embedding does not take the blocks' norm.
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(
                patch_size if i == 0 else 2, in_chans if i == 0 else embed_dims[i - 1],
                embed_dims[i], norm=True, flatten=True))
            setattr(self, f"pos_embed{i + 1}",
                    nn.Parameter(torch.zeros(1, gh * gw, embed_dims[i])))
            setattr(self, f"pos_drop{i + 1}", nn.Dropout(drop_rate))
            setattr(self, f"block{i + 1}", nn.ModuleList([
                TokenBlock(embed_dims[i], self._attention(
                    embed_dims[i], num_heads[i], types[i][j], sr_ratios[i], qkv_bias, drop_rate,
                    attn_drop_rate, inline_injective, inline_local),
                    mlp_ratios[i], drop=drop_rate, drop_path=dpr[cur + j], norm_layer=norm_layer)
                for j in range(depths[i])]))
            cur += depths[i]
        self.head = (nn.Linear(self.num_features, num_classes) if num_classes > 0
                     else nn.Identity())
        self.feature_info = [dict(num_chs=embed_dims[i], reduction=patch_size * 2 ** i,
                                  module=f"block{i + 1}") for i in range(num_stages)]
        self._init_weights()

    @staticmethod
    def _attention(dim: int, num_heads: int, attn_type: str, sr_ratio: int, qkv_bias: bool,
                   drop: float, attn_drop: float, inline_injective: bool, inline_local: bool
                   ) -> GlobalAttention:
        """A block's attention: PVT's spatial reduction for softmax blocks with sr > 1 (the
        official baseline), else global attention over the whole stage map."""
        if attn_type == "softmax" and sr_ratio > 1:
            return SpatialReductionAttention(dim, num_heads, sr_ratio, qkv_bias=qkv_bias,
                                             attn_drop=attn_drop, proj_drop=drop)
        return GlobalAttention.for_block(dim, num_heads, attn_type, inline_injective,
                                         inline_local, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                         proj_drop=drop, split_kv=True)

    def _init_weights(self) -> None:
        for i in range(self.num_stages):
            trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        self.apply(_helpers.init_weights_trunc_normal)

    # ---- timm model API ---------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"pos_embed{i + 1}" for i in range(self.num_stages)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        stem = r"^(?:patch_embed1|pos_embed1)\b"
        if coarse:
            return dict(stem=stem, blocks=r"^(?:patch_embed|pos_embed|block)(\d+)")
        # A stage's patch embedding joins the stage's first block.
        return dict(stem=stem, blocks=[(r"^block(\d+)\.(\d+)", None),
                                       (r"^(?:patch_embed|pos_embed)(\d+)", (0,))])

    # ---- forward ----------------------------------------------------------------------------

    def _pos_embed_for(self, i: int, hw: tuple[int, int]) -> torch.Tensor:
        return _helpers.pos_embed_for_grid(getattr(self, f"pos_embed{i + 1}"),
                                           self.grid_sizes[i], hw, num_prefix_tokens=0)

    def _forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_i, ceil(H/s), ceil(W/s)) through stage ``i``."""
        b = x.shape[0]
        x, hw = getattr(self, f"patch_embed{i + 1}")(x)
        x = getattr(self, f"pos_drop{i + 1}")(x + self._pos_embed_for(i, hw))
        x = _helpers.run_blocks(getattr(self, f"block{i + 1}"), x, hw,
                                checkpointing=self.grad_checkpointing)
        return x.transpose(1, 2).reshape(b, -1, hw[0], hw[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> last stage map (B, C, ceil(H/32), ceil(W/32)) (no final norm)."""
        for i in range(self.num_stages):
            x = self._forward_stage(i, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
            return x if pre_logits else self.head(x)
        return x if pre_logits else _helpers.head_per_position(self.head, x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs as (B, C_i, ceil(H/s_i), ceil(W/s_i)) maps, s_i = 4, 8, 16, 32.
        ``norm`` has no effect: the model has no final norm."""
        _helpers.check_output_fmt(output_fmt, ("NCHW",))
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        last = max_index if stop_early else self.num_stages - 1
        intermediates = []
        for i in range(last + 1):
            x = self._forward_stage(i, x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1,
                                  prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the stages after the last wanted intermediate (and the head)."""
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            for name in ("patch_embed", "pos_embed", "pos_drop", "block"):
                delattr(self, f"{name}{i + 1}")
        pruned_end = max_index < self.num_stages - 1
        self.num_stages = max_index + 1
        self.grid_sizes = self.grid_sizes[:self.num_stages]
        if pruned_end:
            # The head was sized for the last stage: it has to go with it.
            self.num_features = self.head_hidden_size = self.embed_dims[max_index]
        if prune_head or pruned_end:
            self.reset_classifier(0, "")
        return take_indices


def checkpoint_filter_fn(state_dict: dict, model: InLinePVT) -> dict[str, torch.Tensor]:
    """Official (or this repo's) checkpoint -> ``model``'s state dict.

    Names are the official ones; per-stage position embeddings are resampled when the checkpoint
    was trained at another ``img_size``.
    """
    sd = _helpers.unwrap_state_dict(state_dict)
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.startswith("pos_embed") and k in own and v.shape != own[k].shape:
            stage = int(k[len("pos_embed"):]) - 1
            side = math.isqrt(v.shape[1])
            if side * side != v.shape[1]:
                raise ValueError(f"checkpoint {k} has {v.shape[1]} tokens, not a square grid; "
                                 "cannot tell its layout")
            v = _helpers.resize_pos_embed_to(v, own[k], num_prefix_tokens=0, old_hw=(side, side),
                                             new_hw=model.grid_sizes[stage])
        out[k] = v
    return out


def _create(variant: str, pretrained: bool = False, **kwargs) -> InLinePVT:
    return _helpers.build_backbone(InLinePVT, variant, pretrained, checkpoint_filter_fn,
                                   (0, 1, 2, 3), **kwargs)


_cfg = partial(_helpers.default_cfg, "patch_embed1.proj", pool_size=(7, 7))


default_cfgs = generate_default_cfgs({
    "inline_pvt_tiny.in1k": _cfg(),
    "inline_pvt_small.in1k": _cfg(),
    "inline_pvt_medium.in1k": _cfg(),
    "inline_pvt_large.in1k": _cfg(),
})

_PVT = dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16),
            mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), qkv_bias=True)

# Drop-path defaults: InLine's own training configs are not published in the repo we could
# read; these follow the same authors' FLatten-PVT configs (same training code).


def _build(variant: str, pretrained: bool, depths: tuple[int, ...], drop_path_rate: float,
           kwargs: dict) -> InLinePVT:
    args = dict(_PVT, depths=depths, drop_path_rate=drop_path_rate)
    return _create(variant, pretrained, **{**args, **kwargs})


@register_model
def inline_pvt_tiny(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-T: depths 2,2,2,2 (12.03M params)."""
    return _build("inline_pvt_tiny", pretrained, (2, 2, 2, 2), 0.1, kwargs)


@register_model
def inline_pvt_small(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-S: depths 3,4,6,3 (21.56M params)."""
    return _build("inline_pvt_small", pretrained, (3, 4, 6, 3), 0.1, kwargs)


@register_model
def inline_pvt_medium(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-M: depths 3,4,18,3 (37.62M params)."""
    return _build("inline_pvt_medium", pretrained, (3, 4, 18, 3), 0.3, kwargs)


@register_model
def inline_pvt_large(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-L: depths 3,8,27,3 (51.15M params)."""
    return _build("inline_pvt_large", pretrained, (3, 8, 27, 3), 0.3, kwargs)
