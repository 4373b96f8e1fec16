"""The InLine paper's Fig. 1 / Prop. 1 made numerical: do distinct queries get distinct
attention distributions?

Plain linear attention divides by the row sum, so any two queries whose features are
collinear (q and 2q; with the ReLU kernel also queries that differ only in their negative
coordinates) receive exactly the same distribution over the keys. InLine subtracts the row mean
instead (w(q) is affine in q: w(aq) = w(q) only for a = 1, unless q is orthogonal to every
centred key) and softmax is injective too. Three counts per head and kind, on a block's real
queries and keys:

- ``real``: among the block's own queries, pairs of numerically distinct queries with
  numerically identical distributions (and how many distinct queries / distributions there are);
- ``scaled``: each query q against ``alpha * q`` (alpha = 2: the paper's example);
- ``collinear``: rays of queries ``a * q`` for ``a`` in ``ray_scales``: how many distinct
  distributions each ray receives (1 = all the same; ``len(ray_scales)`` = all different).

"Numerically identical": every weight within ``tol`` times the row's largest weight (float64).
Rows whose weights are all zero (ReLU features all zero: no distribution at all) are counted as
``degenerate`` and left out. The plain linear kind is taken without the kernels' eps (1e-6 added
to the normaliser against division by zero): with it, q and a q differ by about
eps (1/a - 1) / (q . sum k), a rounding-level difference that is no part of Prop. 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from .maps import SiteTensors, attention_weights, counterpart_kinds, image_slice

__all__ = ["DEFAULT_RAY_SCALES", "cluster_rows", "collision_counts", "injectivity_report",
           "single_image"]

DEFAULT_RAY_SCALES = tuple(float(a) for a in torch.logspace(-2, 2, 9, base=2.0))  # 1/4 .. 4


def _same(a: torch.Tensor, b: torch.Tensor, tol: float) -> torch.Tensor:
    scale = torch.maximum(a.abs().amax(-1), b.abs().amax(-1))
    return (a - b).abs().amax(-1) <= tol * scale


def cluster_rows(x: torch.Tensor, tol: float = 1e-6, neighbours: int = 8) -> torch.Tensor:
    """Labels (n,) grouping the rows of ``x`` (n, m) that are numerically identical.

    Rows are sorted by a random positive projection (identical rows project to the same value)
    and each row is compared with its next ``neighbours`` in that order; equal pairs are joined.
    """
    n = x.shape[0]
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        gen = torch.Generator().manual_seed(0)
        r = torch.rand(x.shape[1], generator=gen, dtype=x.dtype) + 0.5
        order = torch.argsort(x @ r)
        for off in range(1, min(neighbours, n - 1) + 1):
            a, b = order[:-off], order[off:]
            same = _same(x[a], x[b], tol)
            for i, j in zip(a[same].tolist(), b[same].tolist(), strict=True):
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    return torch.tensor([find(i) for i in range(n)], dtype=torch.long)


def _pairs(labels: torch.Tensor) -> int:
    counts = torch.unique(labels, return_counts=True)[1]
    return int((counts * (counts - 1) // 2).sum())


def collision_counts(p: torch.Tensor, q: torch.Tensor, tol: float = 1e-6) -> dict[str, int]:
    """For queries ``q`` (n, d) and their distributions ``p`` (n, Nk): how many numerically
    distinct queries share their distribution with another one."""
    valid = p.abs().sum(-1) > 0
    p, q = p[valid], q[valid]
    lp, lq = cluster_rows(p, tol), cluster_rows(q, tol)
    joint = lp * (int(lq.max()) + 1 if len(lq) else 1) + lq
    colliding_pairs = _pairs(lp) - _pairs(joint)
    # Queries in a distribution group that holds more than one distinct query.
    colliding = 0
    for g in torch.unique(lp):
        members = lp == g
        if len(torch.unique(lq[members])) > 1:
            colliding += int(members.sum())
    return {"queries": int(valid.numel()), "degenerate": int((~valid).sum()),
            "distinct_queries": len(torch.unique(lq)),
            "distinct_distributions": len(torch.unique(lp)),
            "colliding_pairs": colliding_pairs, "colliding_queries": colliding}


def injectivity_report(t: SiteTensors, kinds: Sequence[str] | None = None, image: int = 0,
                       alpha: float = 2.0, ray_scales: Sequence[float] = DEFAULT_RAY_SCALES,
                       n_rays: int = 32, tol: float = 1e-6) -> dict[str, Any]:
    """The three counts per head for each kind (own first, then the counterparts)."""
    kinds = list(kinds or counterpart_kinds(t))
    rows = torch.arange(t.n_queries)
    q = t.q[image:image + 1]
    scales = torch.tensor(list(ray_scales), dtype=q.dtype)
    # Rays from queries spread over the block (evenly in token order).
    ray_rows = torch.linspace(0, t.n_queries - 1, min(n_rays, t.n_queries)).round().long()
    report: dict[str, Any] = {}
    sub = single_image(t, image)
    for kind in kinds:
        p = attention_weights(sub, kind, rows)[0]                           # (H, N, Nk)
        p2 = attention_weights(sub, kind, rows, q=alpha * q)[0]
        # (1, H, S, R, d): scale-major, as ray_rows.repeat(S) and the view below read it.
        ray_q = scales.view(1, 1, -1, 1, 1) * q[:, :, ray_rows].unsqueeze(2)
        ray_q = ray_q.reshape(1, t.num_heads, -1, t.head_dim)
        ray_rows_rep = ray_rows.repeat(len(scales))
        p_ray = attention_weights(sub, kind, ray_rows_rep, q=ray_q)[0]
        p_ray = p_ray.view(t.num_heads, len(scales), len(ray_rows), -1)
        heads = []
        for h in range(t.num_heads):
            real = collision_counts(p[h], q[0, h], tol)
            ok = (p[h].abs().sum(-1) > 0) & (p2[h].abs().sum(-1) > 0)
            same = _same(p[h][ok], p2[h][ok], tol)
            distinct = []
            for r in range(len(ray_rows)):
                ray = p_ray[h, :, r]
                if (ray.abs().sum(-1) > 0).all():
                    distinct.append(len(torch.unique(cluster_rows(ray, tol))))
            heads.append({
                "real": real,
                "scaled": {"alpha": alpha, "queries": int(ok.sum()),
                           "identical": int(same.sum())},
                "collinear": {"rays": len(distinct), "points_per_ray": len(scales),
                              "distinct_per_ray_mean": (sum(distinct) / len(distinct)
                                                        if distinct else None),
                              "rays_all_identical": sum(d == 1 for d in distinct)},
            })
        report[kind] = {"heads": heads, "total": _total(heads)}
    return report


def single_image(t: SiteTensors, image: int) -> SiteTensors:
    """``t`` restricted to one image, without the local terms and with the plain linear kind's
    eps at 0 (see the module docstring)."""
    return dataclasses.replace(image_slice(t, image), locals=[], const=None, expected=None,
                               post=None, eps=0.0)


def _total(heads: list[dict[str, Any]]) -> dict[str, Any]:
    real = {k: sum(h["real"][k] for h in heads) for k in heads[0]["real"]}
    scaled = {"queries": sum(h["scaled"]["queries"] for h in heads),
              "identical": sum(h["scaled"]["identical"] for h in heads)}
    means = [h["collinear"]["distinct_per_ray_mean"] for h in heads
             if h["collinear"]["distinct_per_ray_mean"] is not None]
    collinear = {"rays": sum(h["collinear"]["rays"] for h in heads),
                 "points_per_ray": heads[0]["collinear"]["points_per_ray"],
                 "rays_all_identical": sum(h["collinear"]["rays_all_identical"] for h in heads),
                 "distinct_per_ray_mean": sum(means) / len(means) if means else None}
    return {"real": real, "scaled": scaled, "collinear": collinear}
