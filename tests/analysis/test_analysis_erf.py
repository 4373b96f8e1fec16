"""Effective receptive field: exact zeros where a window block cannot see, and area fractions
computed from the stored map."""

import numpy as np
import pytest
import timm
import torch

from analysis.erf import area_fractions, erf_map


def _one_block_swin(attn_types: str) -> torch.nn.Module:
    """Patch embedding (4x4, stride 4) + one block, window 4 for 'S'. No shift in block 0."""
    torch.manual_seed(0)
    return timm.create_model("inline_swin_tiny", num_classes=0, embed_dim=16, depths=(1,),
                             num_heads=(1,), attn_types=attn_types, window_size=4).eval()


def test_window_block_erf_is_zero_outside_its_window():
    images = torch.randn(2, 3, 32, 32)
    # 8 x 8 tokens; the centre output token (4, 4) lies in the window of tokens 4..7 x 4..7,
    # i.e. pixels 16..31 x 16..31.
    grad, centre, out_hw = erf_map(_one_block_swin("S"), images, stage=0)
    assert out_hw == (8, 8) and centre == (18.0, 18.0)
    inside = np.zeros_like(grad, dtype=bool)
    inside[16:32, 16:32] = True
    assert (grad[~inside] == 0).all()
    assert (grad[inside] > 0).sum() > 100
    # The same block with InLine's global attention sees the whole image.
    grad_inline, _, _ = erf_map(_one_block_swin("I"), images, stage=0)
    assert (grad_inline[~inside] > 0).sum() > 0.5 * (~inside).sum()


def test_area_fractions_of_known_maps():
    uniform = np.ones((10, 10))
    fr = area_fractions(uniform, (5, 5), (0.2, 0.5, 0.99))
    assert fr["0.2"]["pixels"] == pytest.approx(0.2)
    assert fr["0.99"]["pixels"] == pytest.approx(0.99)
    # squares centred on (5, 5): side 5 holds 25 % (>= 20 %), side 7 holds 49 %, side 9 81 %.
    assert fr["0.2"]["square_side"] == 5 and fr["0.2"]["square"] == pytest.approx(0.25)
    assert fr["0.5"]["square_side"] == 9          # clipped at the border: 9 x 9 = 81 px
    delta = np.zeros((10, 10))
    delta[5, 5] = 3.0
    fr = area_fractions(delta, (5, 5))
    assert all(v["pixels"] == pytest.approx(0.01) for v in fr.values())
    assert all(v["square_side"] == 1 for v in fr.values())
    # A ring at distance 2 from the centre: the first square that holds any of it has side 5.
    ring = np.zeros((11, 11))
    ring[3, 3:8] = ring[7, 3:8] = ring[3:8, 3] = ring[3:8, 7] = 1.0
    fr = area_fractions(ring, (5, 5), (0.5,))
    assert fr["0.5"]["square_side"] == 5 and fr["0.5"]["square"] == pytest.approx(25 / 121)
    assert area_fractions(np.zeros((4, 4)), (2, 2))["0.5"]["square"] is None
