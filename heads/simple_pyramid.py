"""Simple feature pyramid (ViTDet, Li et al. 2022) for plain, single-scale backbones (InLine-DeiT).

Pure torch: the MM registration lives in ``heads.mm_necks``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _rescale(channels: int, factor: float) -> tuple[nn.Module, int]:
    """Layers taking a map to ``factor`` times its resolution, and their output width."""
    if factor == 4.0:
        half, quarter = channels // 2, channels // 4
        return nn.Sequential(
            nn.ConvTranspose2d(channels, half, 2, stride=2), LayerNorm2d(half), nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, stride=2)), quarter
    if factor == 2.0:
        return nn.ConvTranspose2d(channels, channels // 2, 2, stride=2), channels // 2
    if factor == 1.0:
        return nn.Identity(), channels
    if factor == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True), channels
    raise ValueError(f"scale factor {factor} is not supported; use 4, 2, 1 or 0.5")


class SimpleFeaturePyramid(nn.Module):
    """Turns stride-16 maps into a pyramid at strides 16/``scale_factors``.

    Given one map (ViTDet), every level is built from it; given one map per level (e.g. four
    blocks of InLine-DeiT, as BEiT-style dense heads do), level i is built from map i.
    Each level: rescale, then 1x1 conv + LN and 3x3 conv + LN to ``out_channels``.
    """

    def __init__(self, in_channels: int | Sequence[int], out_channels: int = 256,
                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5)):
        super().__init__()
        n = len(scale_factors)
        in_channels = [in_channels] * n if isinstance(in_channels, int) else list(in_channels)
        if len(in_channels) not in (1, n):
            raise ValueError(f"{len(in_channels)} input widths for {n} levels: give one width "
                             "(one map for all levels) or one per level")
        in_channels = in_channels * n if len(in_channels) == 1 else in_channels
        self.scale_factors = tuple(float(f) for f in scale_factors)
        self.stages = nn.ModuleList()
        for c, f in zip(in_channels, self.scale_factors, strict=True):
            rescale, width = _rescale(c, f)
            self.stages.append(nn.Sequential(
                rescale,
                nn.Conv2d(width, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels)))

    def forward(self, feats: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = [feats] if isinstance(feats, torch.Tensor) else list(feats)
        if len(feats) == 1:
            feats = feats * len(self.stages)
        elif len(feats) != len(self.stages):
            raise ValueError(f"got {len(feats)} maps for {len(self.stages)} pyramid levels: give "
                             "the backbone one out_index (one map) or one per level")
        # Dense NCHW out: LayerNorm2d leaves maps channels-last, which mmcv's RoIAlign misreads.
        return tuple(stage(f).contiguous() for stage, f in zip(self.stages, feats, strict=True))
