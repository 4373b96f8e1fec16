"""Rank, effective rank and entropy: on hand-built matrices, then the low-rank bounds of the
attention kinds on a real block (rank <= d for plain linear, <= d + 1 for InLine)."""

import dataclasses

import pytest
import torch

from analysis.rank import matrix_stats, rank_report
from analysis.sites import build_site_tensors, capture, find_sites


def test_matrix_stats_on_known_matrices():
    torch.manual_seed(0)
    a, b = torch.randn(20, 3, dtype=torch.float64), torch.randn(15, 3, dtype=torch.float64)
    assert matrix_stats(a @ b.T)["rank"] == 3
    eye = matrix_stats(torch.eye(10, dtype=torch.float64))
    assert eye["rank"] == 10 and eye["effective_rank"] == pytest.approx(10)
    assert eye["entropy"] == pytest.approx(0)               # one key per row
    uniform = matrix_stats(torch.full((8, 8), 1 / 8, dtype=torch.float64))
    assert uniform["rank"] == 1 and uniform["effective_rank"] == pytest.approx(1)
    assert uniform["entropy"] == pytest.approx(1)           # all keys alike
    signed = matrix_stats(torch.tensor([[0.75, -0.25], [0.5, 0.5]], dtype=torch.float64))
    assert signed["negative_mass"] == pytest.approx(0.25 / 2.0)


def test_linear_attention_is_low_rank_and_the_local_term_restores_rank(tiny):
    model, x = tiny("pvt_inline")
    sites = find_sites(model)
    t = build_site_tensors(sites[0], capture(model, sites, x))
    t = dataclasses.replace(t, q=t.q * 30, k=t.k * 30)    # away from the near-uniform init
    d, n = t.head_dim, t.n_queries
    assert n > 4 * d                            # the bounds below are then far from full rank
    rep = rank_report(t, images=[0, 1])
    assert list(rep) == ["inline", "inline+local", "linear", "softmax"]
    assert rep["linear"]["mean"]["rank"] <= d
    assert rep["inline"]["mean"]["rank"] <= d + 1
    assert rep["softmax"]["mean"]["rank"] > d + 1
    assert rep["inline+local"]["mean"]["rank"] > rep["inline"]["mean"]["rank"]
    assert rep["inline"]["mean"]["negative_mass"] > 0
    assert rep["softmax"]["mean"]["negative_mass"] == 0
    sv = rep["inline"]["heads"][0]["singular_values"]
    assert sv[0] == 1 and len(sv) == n


def test_window_attention_rank_is_bounded_by_its_windows(tiny):
    """An image-layout window-attention matrix is block-diagonal: rank <= the number of queries
    and far above one window's size."""
    model, x = tiny("swin_SS")
    sites = find_sites(model)
    t = build_site_tensors(sites[0], capture(model, sites, x))
    rep = rank_report(t)
    stats = rep["softmax"]["mean"]
    assert 16 < stats["rank"] <= t.n_queries
