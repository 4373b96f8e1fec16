"""L2ViT: local window attention (LWA) and linear global attention (LGA) blocks, alternating.

"The Linear Attention Resurrection in Vision Transformer" (Zheng, 2025). Official code:
ChuanyangZheng/L2ViT, classification/models/l2vit.py. Parameter names follow the official file
(``downsample_layers``, ``stages.{s}.{j}``, ``cpe``, ``attn``, ``local_mp``, ``norm``, ``head``) so
the released checkpoints load unchanged.

Layout: conv stem (stride 4) then four stages, each led by a 2x2 stride-2 downsampling (except the
first); in every stage even-index blocks are LWA and odd-index blocks are LGA. Position comes only
from the depthwise CPE convolutions, so any input size works: the image is zero-padded to a
multiple of 4 before the stem (as the official code does), odd maps are padded before each 2x2
downsampling, and window attention pads to a multiple of the window inside
``attention.shifted_window_attention``. An H x W input gives maps of ceil(H / s) x ceil(W / s) at
strides s = 4, 8, 16, 32.

Blocks carry maps channels-last, (B, H, W, C): LayerNorm and the linear layers act on the last
dim and the convolutions see a channels-last NCHW view.

The family has no InLine blocks, so instead of the per-stage ``attn_types`` letters the model takes
``global_attn``: 'l2vit' (official: ReLU linear attention with learnable temperature, denominator
clamped at 100) or 'softmax' (the softmax counterpart: the LGA attention becomes global
scaled-dot-product softmax over all tokens of the stage, with the same ``qkv``/``proj`` layers and
no ``temperature``; CPE, LCM, MLP and the LWA blocks are unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import DropPath, Mlp
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from . import _helpers
from .attention import (
    GlobalAttention,
    L2ViTLinearAttention,
    LocalConcentrationModule,
    WindowAttention,
    shifted_window_attention,
)
from .layers import PatchEmbed

__all__ = ["L2ViT", "checkpoint_filter_fn"]

GLOBAL_ATTN_TYPES = ("l2vit", "softmax")


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class CPE(nn.Module):
    """Conditional position encoding: x + depthwise 3x3 conv(x), on a (B, H, W, C) map."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _to_nhwc(self.proj(_to_nchw(x)))


class LWABlock(nn.Module):
    """Local window attention block (even index in each stage).

    s = CPE0(x); x = s + DP(WMSA(LN1 s)); x = CPE1(x); x = x + DP(MLP(LN2 x)).
    The window attention has no shift and no relative position bias; padding tokens are zeros
    after LN1 and are not masked, as in the official code.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.cpe = nn.ModuleList([CPE(dim), CPE(dim)])
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias,
                                    attn_drop=attn_drop, rel_pos=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.cpe[0](x)
        x = shortcut + self.drop_path(shifted_window_attention(self.norm1(shortcut), self.attn))
        x = self.cpe[1](x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LGABlock(nn.Module):
    """Linear global attention block (odd index in each stage), with the LCM.

    x = CPE(x); x = x + DP(Attn(LN1 x)); x = x + DP(LCM(LN3 x)); x = x + DP(MLP(LN2 x)).
    ``global_attn='softmax'`` swaps the linear attention for global softmax attention.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 attn_drop: float = 0.0, drop_path: float = 0.0, global_attn: str = "l2vit"):
        super().__init__()
        self.cpe = nn.ModuleList([CPE(dim)])
        self.norm1 = nn.LayerNorm(dim)
        if global_attn == "l2vit":
            self.attn = L2ViTLinearAttention(dim, num_heads, qkv_bias=qkv_bias)
        else:
            self.attn = GlobalAttention(dim, num_heads, mode="softmax", qkv_bias=qkv_bias,
                                        attn_drop=attn_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.norm3 = nn.LayerNorm(dim)
        self.local_mp = LocalConcentrationModule(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe[0](x)
        b, h, w, c = x.shape
        tokens = self.norm1(x).reshape(b, h * w, c)
        if isinstance(self.attn, GlobalAttention):
            y = self.attn(tokens, (h, w))
        else:
            y = self.attn(tokens)
        x = x + self.drop_path(y.view(b, h, w, c))
        x = x + self.drop_path(_to_nhwc(self.local_mp(_to_nchw(self.norm3(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvStem(nn.Module):
    """conv3x3 s2 (C/2) + BN + ReLU + conv3x3 s2 (C) + BN; ``proj.{0,1,3,4}`` as official."""

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(embed_dim // 2),
            nn.ReLU(),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """LayerNorm, zero-pad to even H/W (bottom/right), conv 2x2 stride 2. (B, H, W, C) in/out."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _helpers.pad_to_multiple(_to_nchw(self.norm(x)), 2)
        return _to_nhwc(self.proj(x))


class L2ViT(_helpers.ClassifierMixin, nn.Module):
    """L2ViT backbone / classifier (timm API).

    Args:
        num_classes: classifier outputs (0: no head).
        in_chans: image channels.
        img_size: nominal input size, for the pretrained cfg only; any size works.
        global_pool: 'avg' or '' (no pooling).
        dims, depths, num_heads: per-stage widths, block counts and heads (head dim 32).
        window_size: LWA window (7; the official 384 fine-tune uses 12).
        mlp_ratio: MLP hidden width / dim.
        qkv_bias: bias on the qkv projections (official True).
        global_attn: 'l2vit' (official) or 'softmax' (counterpart), see the module docstring.
        drop_rate: dropout before the classifier.
        attn_drop_rate: attention dropout of the softmax attentions (window and global softmax).
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        head_init_scale: factor on the initial classifier weights (official fine-tuning option).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        global_pool: str = "avg",
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        global_attn: str = "l2vit",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        head_init_scale: float = 1.0,
    ):
        super().__init__()
        dims, depths, num_heads = tuple(dims), tuple(depths), tuple(num_heads)
        _helpers.check_model_args(
            global_pool, self.global_pools, num_classes=num_classes, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            per_stage=dict(dims=dims, depths=depths, num_heads=num_heads),
            positive_ints=dict(in_chans=in_chans, dims=dims, depths=depths, num_heads=num_heads,
                               window_size=window_size),
            positive=dict(mlp_ratio=mlp_ratio), widths=dims, heads=num_heads)
        if global_attn not in GLOBAL_ATTN_TYPES:
            raise ValueError(f"unknown global_attn {global_attn!r}; use one of {GLOBAL_ATTN_TYPES}")

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.global_attn = global_attn
        self.window_size = window_size
        self.img_size = img_size
        self.embed_dims = list(dims)
        self.embed_dim = dims[0]
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        # downsample_layers[0] is the stem, [i > 0] lead stage i (official indexing). The stem
        # pads the image to a multiple of 4 first, as the official code does: border outputs
        # then equal the official model's at every size, not only multiples of 4.
        self.downsample_layers = nn.ModuleList(
            [PatchEmbed(4, in_chans, dims[0], norm=True, proj=ConvStem(in_chans, dims[0]))]
            + [Downsample(dims[i - 1], dims[i]) for i in range(1, len(dims))])
        # On the CPU explicitly, so that building under a meta-device context works.
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.feature_info = []
        cur = 0
        for i, (dim, depth, heads) in enumerate(zip(dims, depths, num_heads, strict=True)):
            blocks = []
            for j in range(depth):
                if j % 2 == 0:
                    blk = LWABlock(dim, heads, window_size, mlp_ratio, qkv_bias=qkv_bias,
                                   attn_drop=attn_drop_rate, drop_path=dpr[cur + j])
                else:
                    blk = LGABlock(dim, heads, mlp_ratio, qkv_bias=qkv_bias,
                                   attn_drop=attn_drop_rate, drop_path=dpr[cur + j],
                                   global_attn=global_attn)
                blocks.append(blk)
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
            cur += depth

        self.norm = nn.LayerNorm(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        # Official: truncated normal (std .02) on every conv and linear weight, zero biases (the
        # LayerNorms are left at torch's 1 / 0, which the shared init re-applies unchanged).
        self.apply(partial(_helpers.init_weights_trunc_normal, weight_types=(nn.Conv2d, nn.Linear)))
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    # ---------------------------------------------------------------- timm model API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Learnable attention temperatures (norms and biases fall under timm's 1-D rule)."""
        return {n for n, _ in self.named_parameters() if n.endswith("attn.temperature")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^downsample_layers\.0\.",
            blocks=r"^(?:downsample_layers|stages)\.(\d+)" if coarse else [
                (r"^downsample_layers\.(\d+)", (0,)),
                (r"^stages\.(\d+)\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    def _forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i``'s downsampling (the stem for ``i = 0``), then its blocks; NHWC maps."""
        return _helpers.run_blocks(self.stages[i], self.downsample_layers[i](x),
                                   checkpointing=self.grad_checkpointing)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs at strides 4/8/16/32 as (B, C, H, W) (or NHWC).

        ``norm`` applies the final LayerNorm to the last stage's map only (the only one it fits).
        Returns the maps, or (final features, maps) unless ``intermediates_only``.
        """
        _helpers.check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        num_run = max_index + 1 if stop_early else len(self.stages)
        intermediates = []
        for i in range(num_run):
            x = self._forward_stage(i, x)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                intermediates.append(_to_nchw(y).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        if num_run - 1 == last:
            x = self.norm(x)
        return _to_nchw(x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last index taken (and the norm / head if asked)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.downsample_layers = self.downsample_layers[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_last, H/32, W/32), after the final LayerNorm (rounded up sizes)."""
        for i in range(len(self.stages)):
            x = self._forward_stage(i, x)
        return _to_nchw(self.norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
            x = self.head_drop(x)
            return x if pre_logits else self.head(x)
        # No pooling: the classifier acts per position, logits as (B, classes, H, W).
        x = self.head_drop(x)
        return x if pre_logits else _to_nchw(self.head(_to_nhwc(x)))


def checkpoint_filter_fn(state_dict: dict, model: L2ViT) -> dict[str, torch.Tensor]:
    """Official / training checkpoint -> this model's state dict (names are the official ones).

    Unwraps ``model`` / ``state_dict`` / ``model_ema`` and ``module.`` prefixes. Window size and
    resolution change no parameter (no position tables), so nothing is resized. Dropped only
    where the model really has no such tensor: ``attn.temperature`` for the softmax counterpart
    and ``head.*`` for a model without a classifier.
    """
    sd = _helpers.unwrap_state_dict(state_dict)
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k not in own and (k.endswith("attn.temperature") or k.startswith("head.")):
            continue
        out[k] = v
    return out


def _create_l2vit(variant: str, pretrained: bool = False, **kwargs) -> L2ViT:
    num_stages = len(kwargs.get("depths", (1,) * 4))
    return _helpers.build_backbone(L2ViT, variant, pretrained, checkpoint_filter_fn,
                                   tuple(range(num_stages)), **kwargs)


_cfg = partial(_helpers.default_cfg, "downsample_layers.0.proj.proj.0", pool_size=(7, 7),
               crop_pct=0.875, fixed_input_size=False, license="mit")


# Weights: github.com/ChuanyangZheng/L2ViT releases (not downloadable here; load them with
# backbones.load_checkpoint(model, path, checkpoint_filter_fn)). The 384 fine-tune of the base
# model is l2vit_base(window_size=12) at 384 x 384.
default_cfgs = generate_default_cfgs({
    "l2vit_tiny.in1k": _cfg(),
    "l2vit_small.in1k": _cfg(),
    "l2vit_base.in1k": _cfg(),
})


@register_model
def l2vit_tiny(pretrained: bool = False, **kwargs) -> L2ViT:
    """L2ViT-T: dims 96..768, depths 2-2-6-2, 28.60M params."""
    args = dict(dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
    return _create_l2vit("l2vit_tiny", pretrained, **dict(args, **kwargs))


@register_model
def l2vit_small(pretrained: bool = False, **kwargs) -> L2ViT:
    """L2ViT-S: dims 96..768, depths 2-2-18-2, 50.20M params."""
    args = dict(dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
    return _create_l2vit("l2vit_small", pretrained, **dict(args, **kwargs))


@register_model
def l2vit_base(pretrained: bool = False, **kwargs) -> L2ViT:
    """L2ViT-B: dims 128..1024, depths 2-2-18-2, 88.58M params (official training drop path
    0.3)."""
    args = dict(dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                drop_path_rate=0.3)
    return _create_l2vit("l2vit_base", pretrained, **dict(args, **kwargs))
