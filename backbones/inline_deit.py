"""InLine-DeiT: DeiT (a plain ViT with a cls token) whose blocks use InLine attention.

Han et al., "Bridging the Divide: Reconsidering Softmax and Linear Attention", NeurIPS 2024.
Layout and parameter names follow the official ``models/inline_deit.py`` (LeapLabTHU/InLine) so
its released checkpoints load: ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.{i}.{norm1, attn.qkv, attn.proj, attn.residual, norm2, mlp.fc1, mlp.fc2}``, ``norm``,
``head``. Unlike the official model, any input size works: the image is zero-padded to a multiple
of the patch size and the learned position embedding is resampled to the real token grid.
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
from .attention import GlobalAttention, parse_attention_types
from .layers import PatchEmbed, TokenBlock

__all__ = ["InLineDeiT", "checkpoint_filter_fn"]


class InLineDeiT(_helpers.ClassifierMixin, nn.Module):
    """DeiT with InLine (or linear / softmax, per block) global attention.

    ``attn_types``: one letter for every block ('I' InLine, 'L' plain linear, 'S' softmax) or one
    letter per block ('IIIIIISSSSSS'). ``img_size`` is the construction resolution: it fixes the
    stored position-embedding grid (official checkpoints: 224 / 288 / 448); inputs of any size run.
    """

    global_pools = ("token", "avg", "")

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int = 16,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "token",
                 embed_dim: int = 192, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, attn_types: str = "I",
                 inline_injective: bool = True, inline_local: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1):
        super().__init__()
        img_size = _helpers.to_pair(img_size, "img_size")
        _helpers.check_model_args(
            global_pool, self.global_pools, num_classes=num_classes, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            positive_ints=dict(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                               depth=depth, num_heads=num_heads),
            positive=dict(mlp_ratio=mlp_ratio), widths=(embed_dim,), heads=(num_heads,))
        if not isinstance(attn_types, str):
            raise ValueError(f"attn_types must be a string of letters I/L/S, got {attn_types!r}")
        # DeiT is a single stage: the spec is one letter for all blocks or one per block.
        types = parse_attention_types([attn_types], [depth])[0]

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.patch_size = patch_size
        self.num_prefix_tokens = 1
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False
        # Grid of the stored position embedding (official: img_size // patch_size).
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, flatten=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        # Stochastic depth decay rule (plain Python so the model also builds on the meta device).
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            TokenBlock(embed_dim, GlobalAttention.for_block(
                embed_dim, num_heads, types[i], inline_injective, inline_local,
                qkv_bias=qkv_bias, attn_drop=attn_drop_rate, proj_drop=drop_rate,
                num_prefix_tokens=1),  # the cls token: in N and the mean, not in the 3x3 conv
                mlp_ratio, drop=drop_rate, drop_path=dpr[i], norm_layer=norm_layer)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}")
                             for i in range(depth)]
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_helpers.init_weights_trunc_normal)

    # ---- timm model API ---------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    # ---- forward ----------------------------------------------------------------------------

    def _pos_embed_for(self, hw: tuple[int, int]) -> torch.Tensor:
        return _helpers.pos_embed_for_grid(self.pos_embed, self.grid_size, hw,
                                           self.num_prefix_tokens)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, hw = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.pos_drop(x + self._pos_embed_for(hw)), hw

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> normed tokens (B, 1 + ceil(H/16) * ceil(W/16), C), cls first."""
        x, hw = self._embed(x)
        x = _helpers.run_blocks(self.blocks, x, hw, checkpointing=self.grad_checkpointing)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs without the cls token, as (B, C, ceil(H/16), ceil(W/16)) maps
        (``output_fmt='NCHW'``) or (B, N, C) tokens (``'NLC'``)."""
        _helpers.check_output_fmt(output_fmt, ("NCHW", "NLC"))
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        b = x.shape[0]
        x, (h, w) = self._embed(x)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = _helpers.run_blocks((blk,), x, (h, w), checkpointing=self.grad_checkpointing)
            if i in take_indices:
                y = (self.norm(x) if norm else x)[:, self.num_prefix_tokens:]
                if output_fmt == "NCHW":
                    y = y.transpose(1, 2).reshape(b, -1, h, w)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1,
                                  prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last wanted intermediate (and optionally norm / head)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def checkpoint_filter_fn(state_dict: dict, model: InLineDeiT) -> dict[str, torch.Tensor]:
    """Official (or this repo's) checkpoint -> ``model``'s state dict.

    Names are the official ones; the position embedding is resampled when the checkpoint was
    trained at another ``img_size`` (e.g. the DeiT-S 288 checkpoint into a 224 model).
    """
    sd = _helpers.unwrap_state_dict(state_dict)
    out = {}
    for k, v in sd.items():
        if k == "patch_embed.proj.weight" and v.ndim < 4:
            # Very old timm checkpoints stored the patch projection as a Linear.
            v = v.reshape(model.patch_embed.proj.weight.shape)
        elif k == "pos_embed" and v.shape != model.pos_embed.shape:
            n_old = v.shape[1] - model.num_prefix_tokens
            side = math.isqrt(n_old)
            if side * side != n_old:
                raise ValueError(f"checkpoint pos_embed has {n_old} patch tokens, not a square "
                                 "grid; cannot tell its layout")
            v = _helpers.resize_pos_embed_to(v, model.pos_embed, model.num_prefix_tokens,
                                             old_hw=(side, side), new_hw=model.grid_size)
        out[k] = v
    return out


def _create(variant: str, pretrained: bool = False, **kwargs) -> InLineDeiT:
    return _helpers.build_backbone(InLineDeiT, variant, pretrained, checkpoint_filter_fn,
                                   (3, 5, 7, 11), **kwargs)


_cfg = partial(_helpers.default_cfg, "patch_embed.proj")


default_cfgs = generate_default_cfgs({
    "inline_deit_tiny.in1k": _cfg(),
    "inline_deit_small.in1k": _cfg(input_size=(3, 288, 288), crop_pct=1.0),
    "inline_deit_base.in1k": _cfg(input_size=(3, 448, 448), crop_pct=1.0),
})

# Drop-path defaults: InLine's own training configs are not published in the repo we could
# read; these follow the same authors' Agent-Attention DeiT configs (same training code).


@register_model
def inline_deit_tiny(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-T: dim 192, 6 heads, 12 blocks, 224 (6.48M params)."""
    args = dict(img_size=224, embed_dim=192, depth=12, num_heads=6, drop_path_rate=0.0)
    return _create("inline_deit_tiny", pretrained, **{**args, **kwargs})


@register_model
def inline_deit_small(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-S: dim 320, 10 heads, 12 blocks, 288 (16.73M params)."""
    args = dict(img_size=288, embed_dim=320, depth=12, num_heads=10, drop_path_rate=0.1)
    return _create("inline_deit_small", pretrained, **{**args, **kwargs})


@register_model
def inline_deit_base(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-B: dim 384, 12 heads, 12 blocks, 448 (23.80M params)."""
    args = dict(img_size=448, embed_dim=384, depth=12, num_heads=12, drop_path_rate=0.3)
    return _create("inline_deit_base", pretrained, **{**args, **kwargs})
