"""InLine-CSwin: CSwin Transformer whose early stages use InLine (injective linear) attention.

Layout of the official InLine-CSwin (LeapLabTHU/InLine, ``models/inline_cswin.py`` with the
released configs ``ATTN_TYPE: IISS``): a 7x7 stride-4 conv stem, four stages of CSwin blocks
joined by 3x3 stride-2 conv merges, final LayerNorm, token average, linear head.

Every block holds one ``qkv`` / ``proj`` pair and a list ``attns`` of branches:

- InLine (and plain linear) blocks have ONE branch over the whole feature map with all channels
  and heads (the official InLine split sizes equal the stage resolution, which turns the block into
  its single-branch form): injective linear attention + the predicted 3x3 local residual (kernel
  predicted from the mean of the block input, before ``norm1``) + LePE (``get_v``, depthwise 3x3
  on V).
- Softmax blocks are CSwin's cross-shaped window attention: channels and heads split in halves,
  half 0 attends within vertical stripes, half 1 within horizontal stripes (width ``split_size``),
  each with LePE; the last stage has one branch over the whole map.

Unlike the official code, nothing depends on the construction resolution: the branch layout is
fixed by the stage index (so checkpoints load at any ``img_size``), stripes are padded (and the
padded keys masked) inside ``attention.LePEAttention``, InLine branches see the real map, and the
image is padded to a multiple of 4 so an H x W input gives maps of ceil(H / stride).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from timm.layers import DropPath, Mlp
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import adapt_input_conv
from torch import nn

from . import _helpers
from .attention import (
    LePEAttention,
    LocalResidualPredictor,
    global_linear_attention,
    parse_attention_types,
)

__all__ = ["CSwinBlock", "ConvStem", "InLineBranch", "InLineCSwin", "MergeBlock",
           "checkpoint_filter_fn"]

_NUM_STAGES = 4
_STEM_STRIDE = 4


def _to_map(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W)."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


class _MapToTokens(nn.Module):
    """Parameter-free slot ``stage1_conv_embed.1`` (the official einops Rearrange)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_tokens(x)


class ConvStem(nn.Sequential):
    """Conv 7x7 stride 4 -> tokens -> LayerNorm (official ``stage1_conv_embed.{0,2}``).

    The image is zero-padded at the bottom/right to a multiple of 4 so the map is ceil(H/4).
    """

    def __init__(self, in_chans: int, dim: int):
        super().__init__(nn.Conv2d(in_chans, dim, kernel_size=7, stride=4, padding=2),
                         _MapToTokens(), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        _helpers.check_image(x, self[0].in_channels)
        x = self[0](_helpers.pad_to_multiple(x, _STEM_STRIDE))
        hw = (x.shape[-2], x.shape[-1])
        return self[2](self[1](x)), hw


class MergeBlock(nn.Module):
    """Conv 3x3 stride 2 (padding 1, so any H gives ceil(H/2)) -> LayerNorm."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]
                ) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.conv(_to_map(x, hw))
        hw = (x.shape[-2], x.shape[-1])
        return self.norm(_to_tokens(x)), hw


class InLineBranch(nn.Module):
    """One global linear-attention branch of a CSwin block (official ``attns.{j}``).

    ``mode='inline'``: injective normalisation (``injective=False``: ReLU kernel, row-sum
    normaliser) plus, if ``local``, the predicted 3x3 residual (``residual.{0,2}``).
    ``mode='linear'``: plain linear attention, no residual. LePE (``get_v``) is part of the CSwin
    block design and is kept in every mode. Inputs are the block's q, k, v as (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, mode: str = "inline", injective: bool = True,
                 local: bool = True):
        super().__init__()
        if mode not in ("inline", "linear"):
            raise ValueError(f"InLineBranch mode must be 'inline' or 'linear', got {mode!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.injective = mode == "inline" and injective
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)
        self.residual = (LocalResidualPredictor(dim, num_heads) if mode == "inline" and local
                         else None)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int],
                mean_source: torch.Tensor) -> torch.Tensor:
        """``mean_source``: (B, N, C) tokens whose mean predicts the local kernels (the official
        code uses the block input before ``norm1``)."""
        kernels = self.residual.kernels(mean_source) if self.residual is not None else None
        # One map of V for LePE and the residual, made before the attention: autograd then sums
        # V's gradients in the order of the released code, equal to the last bit.
        v_map = _to_map(v, hw)
        out = global_linear_attention(q, k, v, self.num_heads, hw, kernels, self.injective,
                                      v_grid=v_map)
        return out + _to_tokens(self.get_v(v_map))


class CSwinBlock(nn.Module):
    """CSwin block: x += DP(proj(attns(qkv(norm1 x)))); x += DP(mlp(norm2 x)).

    ``attn_type``: 'inline' / 'linear' (one global InLineBranch) or 'softmax' (two cross-shaped
    LePE branches on channel halves, or one whole-map branch when ``last_stage``).
    """

    def __init__(self, dim: int, num_heads: int, attn_type: str = "inline", split_size: int = 7,
                 last_stage: bool = False, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 inline_injective: bool = True, inline_local: bool = True):
        super().__init__()
        self.dim = dim
        self.attn_type = attn_type
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm1 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        if attn_type == "softmax":
            if last_stage:
                self.attns = nn.ModuleList([LePEAttention(dim, num_heads, split_size, -1,
                                                          attn_drop=attn_drop)])
            else:
                if dim % 2 or num_heads % 2:
                    raise ValueError(f"a cross-shaped softmax block splits channels and heads in "
                                     f"two; dim {dim} and num_heads {num_heads} must be even")
                self.attns = nn.ModuleList([
                    LePEAttention(dim // 2, num_heads // 2, split_size, branch,
                                  attn_drop=attn_drop) for branch in (0, 1)])
        elif attn_type in ("inline", "linear"):
            self.attns = nn.ModuleList([InLineBranch(dim, num_heads, mode=attn_type,
                                                     injective=inline_injective,
                                                     local=inline_local)])
        else:
            raise ValueError(f"unknown attention type {attn_type!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.norm2 = nn.LayerNorm(dim)

    def attend(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The attention residual branch (before drop path) for tokens ``x`` on grid ``hw``."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if isinstance(self.attns[0], InLineBranch):
            out = self.attns[0](q, k, v, hw, mean_source=x)
        elif len(self.attns) == 1:
            out = self.attns[0](q, k, v, hw)
        else:
            h = self.dim // 2
            halves = (slice(None, h), slice(h, None))
            out = torch.cat([branch(q[..., s], k[..., s], v[..., s], hw)
                             for branch, s in zip(self.attns, halves, strict=True)], dim=-1)
        return self.proj_drop(self.proj(out))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attend(x, hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class InLineCSwin(_helpers.ClassifierMixin, nn.Module):
    """InLine-CSwin backbone / classifier (any input size; features at strides 4, 8, 16, 32).

    Args:
        img_size: nominal input size (pretrained config only: the model runs at any size).
        embed_dim: stage-1 width; stage i has ``embed_dim * 2**i`` channels.
        depths, num_heads: per stage (4 stages).
        split_size: stripe width of the cross-shaped softmax blocks per stage (the last stage
            always attends over the whole map).
        attn_types: per-stage letters (I = InLine, L = plain linear, S = CSwin softmax), or per
            block as a list of strings; official 'IISS'. 'SSSS' is the plain CSwin.
        inline_injective, inline_local: the paper's ablation switches for the InLine blocks.
    """

    reinit_head = True  # the official reset_classifier re-applies the init to the new head

    def __init__(self, img_size: int | tuple[int, int] = 224, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "avg", embed_dim: int = 64,
                 depths: Sequence[int] = (2, 4, 18, 1), num_heads: Sequence[int] = (2, 4, 8, 16),
                 split_size: Sequence[int] = (1, 2, 7, 7), mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.2, attn_types: str | Sequence[str] = "IISS",
                 inline_injective: bool = True, inline_local: bool = True):
        super().__init__()
        depths, num_heads, split_size = list(depths), list(num_heads), list(split_size)
        dims = [embed_dim * 2 ** i for i in range(_NUM_STAGES)]
        _helpers.check_model_args(
            global_pool, self.global_pools, num_classes=num_classes, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            per_stage=dict(depths=depths, num_heads=num_heads, split_size=split_size),
            num_stages=_NUM_STAGES,
            positive_ints=dict(in_chans=in_chans, embed_dim=embed_dim, depths=depths,
                               num_heads=num_heads, split_size=split_size),
            positive=dict(mlp_ratio=mlp_ratio), widths=dims, heads=num_heads)
        types = parse_attention_types(attn_types, depths)

        self.img_size = img_size
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.embed_dims = dims
        self.num_features = self.head_hidden_size = dims[-1]
        self.attn_types = types
        self.grad_checkpointing = False
        self._num_stages_kept = _NUM_STAGES

        self.stage1_conv_embed = ConvStem(in_chans, embed_dim)
        # Stochastic depth rises linearly over all blocks (cpu: the model may be built on meta).
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        start = 0
        self.feature_info = []
        for i in range(_NUM_STAGES):
            if i > 0:
                setattr(self, f"merge{i}", MergeBlock(dims[i - 1], dims[i]))
            blocks = nn.ModuleList([
                CSwinBlock(dims[i], num_heads[i], attn_type=types[i][j], split_size=split_size[i],
                           last_stage=i == _NUM_STAGES - 1, mlp_ratio=mlp_ratio,
                           qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                           drop_path=dpr[start + j], inline_injective=inline_injective,
                           inline_local=inline_local)
                for j in range(depths[i])])
            setattr(self, f"stage{i + 1}", blocks)
            start += depths[i]
            self.feature_info.append(dict(num_chs=dims[i], reduction=_STEM_STRIDE * 2 ** i,
                                          module=f"stage{i + 1}"))
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_helpers.init_weights_trunc_normal)

    # ---------------------------------------------------------------- timm model API

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # No position embeddings, tokens, bias tables or temperatures; norms and biases are
        # excluded by timm's 1-D rule.
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # merge{k} sits between stage k and stage k+1: grouped at the end of stage k (coarse:
        # in stage k's group, like Swin's downsample, so frozen_stages=k covers it).
        return dict(
            stem=r"^stage1_conv_embed",
            blocks=[(r"^stage(\d+)\.", None), (r"^merge(\d+)\.", None)] if coarse else [
                (r"^stage(\d+)\.(\d+)\.", None),
                (r"^merge(\d+)\.", (99998,)),
                (r"^norm", (99999,)),
            ],
        )

    def _forward_stage(self, i: int, x: torch.Tensor, hw: tuple[int, int]
                       ) -> tuple[torch.Tensor, tuple[int, int]]:
        if i > 0:
            x, hw = getattr(self, f"merge{i}")(x, hw)
        x = _helpers.run_blocks(getattr(self, f"stage{i + 1}"), x, hw,
                                checkpointing=self.grad_checkpointing)
        return x, hw

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs at strides 4/8/16/32 (``norm`` applies the final norm to the last
        stage only, as timm does); returns the list, or (final NCHW map, list)."""
        _helpers.check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        take_indices, max_index = feature_take_indices(_NUM_STAGES, indices)
        if max_index >= self._num_stages_kept:
            raise ValueError(f"stage {max_index} was pruned (kept {self._num_stages_kept})")
        last = stop_early or intermediates_only
        num_run = max_index + 1 if last else self._num_stages_kept
        intermediates = []
        x, hw = self.stage1_conv_embed(x)
        for i in range(num_run):
            x, hw = self._forward_stage(i, x, hw)
            if i in take_indices:
                y = self.norm(x) if norm and i == _NUM_STAGES - 1 else x
                y = _to_map(y, hw)
                intermediates.append(y.permute(0, 2, 3, 1) if output_fmt == "NHWC" else y)
        if intermediates_only:
            return intermediates
        if num_run == _NUM_STAGES:
            x = self.norm(x)
        return _to_map(x, hw), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last wanted one (and the norm / head)."""
        take_indices, max_index = feature_take_indices(_NUM_STAGES, indices)
        for i in range(max_index + 1, _NUM_STAGES):
            setattr(self, f"stage{i + 1}", nn.ModuleList())
            setattr(self, f"merge{i}", None)
        self._num_stages_kept = max_index + 1
        if prune_norm or max_index < _NUM_STAGES - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> normalised (B, C_4, ceil(H/32), ceil(W/32)) map."""
        x, hw = self.stage1_conv_embed(x)
        for i in range(self._num_stages_kept):
            x, hw = self._forward_stage(i, x, hw)
        return _to_map(self.norm(x), hw)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
            return x if pre_logits else self.head(x)
        return x if pre_logits else _helpers.head_per_position(self.head, x)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: InLineCSwin
                         ) -> dict[str, torch.Tensor]:
    """Official InLine-CSwin checkpoint (any wrapper, DDP prefixes) -> this model's state dict.

    Names are the official ones and nothing depends on the training resolution or split size, so
    the mapping is the identity except: a stem trained with another number of input channels is
    adapted (timm's ``adapt_input_conv``), and classifier weights are dropped for a model built
    without a head (``num_classes=0``).
    """
    sd = _helpers.unwrap_state_dict(state_dict)
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.startswith("head.") and isinstance(model.head, nn.Identity):
            continue
        if k == "stage1_conv_embed.0.weight" and k in own and v.shape[1] != own[k].shape[1]:
            v = adapt_input_conv(own[k].shape[1], v)
        out[k] = v
    return out


_cfg = partial(_helpers.default_cfg, "stage1_conv_embed.0", pool_size=(7, 7),
               fixed_input_size=False, license="mit")


default_cfgs = generate_default_cfgs({
    "inline_cswin_tiny.in1k": _cfg(),
    "inline_cswin_small.in1k": _cfg(),
    "inline_cswin_base.in1k": _cfg(),
})


def _create_inline_cswin(variant: str, pretrained: bool = False, **kwargs: Any) -> InLineCSwin:
    return _helpers.build_backbone(InLineCSwin, variant, pretrained, checkpoint_filter_fn,
                                   (0, 1, 2, 3), **kwargs)


@register_model
def inline_cswin_tiny(pretrained: bool = False, **kwargs: Any) -> InLineCSwin:
    """InLine-CSwin-T (20.60M params, official drop path 0.2)."""
    args = dict(embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_inline_cswin("inline_cswin_tiny", pretrained, **dict(args, **kwargs))


@register_model
def inline_cswin_small(pretrained: bool = False, **kwargs: Any) -> InLineCSwin:
    """InLine-CSwin-S (33.03M params, official drop path 0.4)."""
    args = dict(embed_dim=64, depths=(3, 6, 29, 2), num_heads=(2, 4, 8, 16), drop_path_rate=0.4)
    return _create_inline_cswin("inline_cswin_small", pretrained, **dict(args, **kwargs))


@register_model
def inline_cswin_base(pretrained: bool = False, **kwargs: Any) -> InLineCSwin:
    """InLine-CSwin-B (73.41M params, official drop path 0.5)."""
    args = dict(embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)
    return _create_inline_cswin("inline_cswin_base", pretrained, **dict(args, **kwargs))
