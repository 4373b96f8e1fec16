"""Injectivity (InLine's Prop. 1): the counts must say what the mathematics says."""

import dataclasses

import pytest
import torch

from analysis.injectivity import cluster_rows, collision_counts, injectivity_report
from analysis.maps import SiteTensors, attention_weights
from analysis.sites import build_site_tensors, capture, find_sites


def _first_site(tiny, key):
    model, x = tiny(key)
    sites = find_sites(model)
    return build_site_tensors(sites[0], capture(model, sites, x))


def test_cluster_rows_groups_identical_rows_only():
    a = torch.tensor([0.1, 0.5, 0.4], dtype=torch.float64)
    b = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    x = torch.stack([a, b, a, 2 * a, a + 1e-9, b, a + 1e-3])
    labels = cluster_rows(x, tol=1e-6)
    assert labels[0] == labels[2] == labels[4]          # equal within the tolerance
    assert labels[1] == labels[5]
    assert len({labels[0].item(), labels[1].item(), labels[3].item(), labels[6].item()}) == 4


def test_scaled_and_collinear_queries(tiny):
    """q and 2q: identical plain-linear distributions, different InLine and softmax ones; and a
    ray of collinear queries gets one plain-linear distribution but one per point otherwise."""
    t = _first_site(tiny, "pvt_inline")
    # Real checkpoints have larger q.k than an init: scale q so every kind is far from uniform.
    t = dataclasses.replace(t, q=t.q * 20)
    # The first check, by hand: the weights themselves.
    q = t.q[:1]
    one = dataclasses.replace(t, q=q, k=t.k[:1], v=t.v[:1], eps=0.0)
    for kind, same in (("linear", True), ("inline", False), ("softmax", False)):
        p1 = attention_weights(one, kind)
        p2 = attention_weights(one, kind, q=2 * q)
        assert torch.allclose(p1, p2, rtol=0, atol=1e-14 * p1.abs().max()) == same, kind
    # The tool's counts say the same.
    rep = injectivity_report(t, image=0, alpha=2.0, n_rays=8)
    n = t.n_queries * t.num_heads
    lin, inl, soft = rep["linear"]["total"], rep["inline"]["total"], rep["softmax"]["total"]
    assert lin["scaled"] == {"queries": n, "identical": n}
    assert inl["scaled"] == {"queries": n, "identical": 0}
    assert soft["scaled"]["identical"] == 0
    rays = 8 * t.num_heads
    assert lin["collinear"]["rays_all_identical"] == rays
    assert lin["collinear"]["distinct_per_ray_mean"] == 1
    assert inl["collinear"]["rays_all_identical"] == 0
    assert inl["collinear"]["distinct_per_ray_mean"] == inl["collinear"]["points_per_ray"]
    assert soft["collinear"]["distinct_per_ray_mean"] == soft["collinear"]["points_per_ray"]


def _handmade(q: torch.Tensor, k: torch.Tensor) -> SiteTensors:
    """A one-head site of the given queries and keys (one image)."""
    n, d = q.shape
    return SiteTensors(q=q[None, None], k=k[None, None], v=torch.zeros(1, 1, len(k), d,
                       dtype=q.dtype), own="inline", scale=d ** -0.5, query_hw=(1, n),
                       key_hw=(1, len(k)))


def test_real_query_collisions_are_counted():
    """Queries that differ only in coordinates the ReLU zeroes collide under plain linear
    attention (and nowhere else); queries that are equal are not counted as colliding."""
    torch.manual_seed(0)
    d, n_keys = 4, 12
    base = torch.rand(6, d, dtype=torch.float64) + 0.1          # positive: ReLU keeps them
    pairs = base[:3].clone().repeat(2, 1)
    pairs[:3, 0] = -0.5                                          # relu -> 0 ...
    pairs[3:, 0] = -2.0                                          # ... for both halves
    dup = base[3:4].clone()                                      # an exact duplicate query
    q = torch.cat([base, pairs, dup])
    k = torch.randn(n_keys, d, dtype=torch.float64)
    rep = injectivity_report(_handmade(q, k), n_rays=4)
    lin = rep["linear"]["heads"][0]["real"]
    assert lin["colliding_pairs"] == 3 and lin["colliding_queries"] == 6
    assert lin["distinct_queries"] == len(q) - 1                 # the duplicate is not distinct
    for kind in ("inline", "softmax"):
        real = rep[kind]["heads"][0]["real"]
        assert real["colliding_pairs"] == 0 and real["colliding_queries"] == 0, kind
        assert real["distinct_distributions"] == len(q) - 1


def test_degenerate_rows_are_left_out():
    q = torch.tensor([[-1.0, -2.0], [1.0, 0.5], [-3.0, -1.0]], dtype=torch.float64)
    k = torch.rand(5, 2, dtype=torch.float64)
    p = attention_weights(dataclasses.replace(_handmade(q, k), eps=0.0), "linear")[0, 0]
    assert torch.isfinite(p).all() and (p[0] == 0).all()
    counts = collision_counts(p, q)
    assert counts["degenerate"] == 2 and counts["colliding_pairs"] == 0


@pytest.mark.parametrize("key", ["l2vit", "swin_SS"])
def test_report_runs_on_other_kinds(tiny, key):
    """L2ViT's clamped denominator and window attention's restricted keys go through too."""
    t = _first_site(tiny, key) if key == "swin_SS" else None
    if t is None:
        model, x = tiny(key)
        sites = find_sites(model)
        t = build_site_tensors(sites[1], capture(model, sites, x))       # the LGA block
        assert t.own == "l2vit"
    rep = injectivity_report(t, n_rays=4)
    assert list(rep)[0] == t.own
    for v in rep.values():
        assert v["total"]["real"]["queries"] == t.n_queries * t.num_heads
