"""Effective receptive field (ERF), as in RepLKNet's and VMamba's analyses.

For a stage output map (B, C, h, w): the gradient of sum_c relu(out[:, c, h//2, w//2]) with
respect to the input image, relu'd, summed over the colour channels and accumulated over the
images: an (H, W) map of how much each input pixel can move the centre of the output. Stored as
it is (``.npz`` with the centre), and summarised by the fraction of the image area that holds a
given share (20 / 50 / 99 %) of its mass:

- ``square``: the smallest square centred on the output centre's pixel that holds the share
  (RepLKNet's "high-contribution area ratio"; RepLKNet takes log10(1 + map) first, which depends
  on the scale of the gradients; ``log=True`` does the same);
- ``pixels``: the fewest pixels, anywhere, that hold the share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["DEFAULT_THRESHOLDS", "area_fractions", "erf_map", "stage_output"]

DEFAULT_THRESHOLDS = (0.2, 0.5, 0.99)


def stage_output(model: nn.Module, x: torch.Tensor, stage: int) -> torch.Tensor:
    """The (B, C, h, w) output of feature level ``stage`` (timm's ``forward_intermediates``;
    for InLine-DeiT a level is a block)."""
    return model.forward_intermediates(x, indices=[stage], intermediates_only=True,
                                       stop_early=True)[0]


def erf_map(model: nn.Module, images: torch.Tensor, stage: int, batch: int = 2
            ) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Accumulated input-gradient map (H, W) float64 for the centre of stage ``stage``'s output;
    also the centre in pixels (y, x) and the output grid (h, w)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    out_hw = None
    try:
        for i in range(0, len(images), batch):
            x = images[i:i + batch].clone().requires_grad_(True)
            out = stage_output(model, x, stage)
            h, w = out.shape[-2:]
            out_hw = (h, w)
            centre = torch.relu(out[:, :, h // 2, w // 2]).sum()
            (grad,) = torch.autograd.grad(centre, x)
            total += torch.relu(grad).sum(dim=(0, 1)).double()
    finally:
        model.train(was_training)
    big_h, big_w = images.shape[-2:]
    h, w = out_hw
    # Centre of the output token, in input pixels (each token covers H/h pixels, padding aside).
    stride_h, stride_w = -(-big_h // h), -(-big_w // w)
    centre_px = ((h // 2 + 0.5) * stride_h, (w // 2 + 0.5) * stride_w)
    return total.numpy(), centre_px, out_hw


def area_fractions(grad: np.ndarray, centre: Sequence[float],
                   thresholds: Sequence[float] = DEFAULT_THRESHOLDS, log: bool = False
                   ) -> dict[str, Any]:
    """Fractions of the area of ``grad`` (H, W) holding each threshold's share of its mass."""
    m = np.asarray(grad, dtype=np.float64)
    if log:
        m = np.log10(1.0 + m)
    total = m.sum()
    big_h, big_w = m.shape
    if total <= 0:
        return {f"{t:g}": {"square": None, "square_side": None, "pixels": None}
                for t in thresholds}
    integral = np.zeros((big_h + 1, big_w + 1))
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    cy = min(int(centre[0]), big_h - 1)
    cx = min(int(centre[1]), big_w - 1)
    sorted_mass = np.cumsum(np.sort(m, axis=None)[::-1])
    out = {}
    for t in thresholds:
        for r in range(max(big_h, big_w) + 1):
            y0, y1 = max(cy - r, 0), min(cy + r + 1, big_h)
            x0, x1 = max(cx - r, 0), min(cx + r + 1, big_w)
            mass = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            if mass >= t * total * (1 - 1e-12):
                break
        n_pix = int(np.searchsorted(sorted_mass, t * total * (1 - 1e-12)) + 1)
        out[f"{t:g}"] = {"square": (y1 - y0) * (x1 - x0) / (big_h * big_w),
                         "square_side": 2 * r + 1,
                         "pixels": min(n_pix, m.size) / m.size}
    return out
