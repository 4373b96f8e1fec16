"""Layers that several families share (the attention modules live in ``attention.py``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import DropPath, Mlp
from torch import nn

from ._helpers import check_image, pad_to_multiple

__all__ = ["PatchEmbed", "TokenBlock"]


class PatchEmbed(nn.Module):
    """Patch embedding: a projection of stride ``patch_size``, then LayerNorm if ``norm``.

    The projection is the non-overlapping conv (kernel = stride = patch size) of DeiT, PVT and
    Swin, or ``proj``, another module of that stride (L2ViT's convolutional stem). The image is
    first zero-padded at the bottom / right to a multiple of the patch size, so any H x W input
    gives a ceil(H / p) x ceil(W / p) grid (the official models pad this way, or only take
    multiples). Returns the channels-last map (B, H', W', C), or with ``flatten`` the tokens
    (B, H' * W', C) and the grid (H', W'). Parameters ``proj.*`` and ``norm.*``, as officially.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool = False,
                 flatten: bool = False, proj: nn.Module | None = None):
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.flatten = flatten
        self.proj = proj if proj is not None else nn.Conv2d(
            in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[int, int]]:
        check_image(x, self.in_chans)
        x = self.norm(self.proj(pad_to_multiple(x, self.patch_size)).permute(0, 2, 3, 1))
        if self.flatten:
            return x.flatten(1, 2), (x.shape[1], x.shape[2])
        return x


class TokenBlock(nn.Module):
    """Pre-norm transformer block on (B, N, C) tokens whose last ones lie on the grid ``hw``
    (DeiT, PVT): ``x + DP(attn(norm1(x), hw))``, then ``x + DP(mlp(norm2(x)))``.

    ``attn`` is the block's attention module, built by the family; parameter names ``norm1``,
    ``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2`` as officially.
    """

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 4.0, drop: float = 0.0,
                 drop_path: float = 0.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))
