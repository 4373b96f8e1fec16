"""Rank, effective rank and entropy of explicit attention matrices.

The low-rank criticism of linear attention (as in the focused-linear-attention work): a plain
linear attention matrix is phi(Q) phi(K)^T scaled per row, so its rank is at most the head dim d;
InLine's is at most d + 1 (the 1/N term); softmax's is generically full. A depthwise local term
(InLine's predicted residual, CSwin's LePE) adds a banded matrix and with it rank.

- ``rank``: numerical rank (singular values above ``rtol`` times the largest; by default
  max(N, M) times float64's machine epsilon, numpy's rule);
- ``effective_rank``: exp of the entropy of the normalised singular values (Roy & Vetterli);
- ``entropy``: mean over rows of the entropy of |w| / sum |w|, divided by log of the number of
  keys the row can see (1 = uniform attention, 0 = one key); ``negative_mass``: the share of
  |w| on negative weights (InLine's weights may be negative).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .maps import (
    SiteTensors,
    attention_weights,
    counterpart_kinds,
    head_local_weights,
    image_slice,
)

__all__ = ["matrix_stats", "rank_report"]


def matrix_stats(w: torch.Tensor, allowed: torch.Tensor | None = None,
                 rtol: float | None = None) -> dict[str, Any]:
    """Stats of one (n, m) attention matrix; ``allowed`` (n, m) marks the keys each row sees."""
    w = w.double()
    sv = torch.linalg.svdvals(w)
    if rtol is None:
        rtol = max(w.shape) * torch.finfo(w.dtype).eps
    rank = int((sv > rtol * sv[0]).sum()) if sv[0] > 0 else 0
    p = sv / sv.sum() if sv.sum() > 0 else sv
    p = p[p > 0]
    erank = float(torch.exp(-(p * p.log()).sum()))
    mag = w.abs()
    row = mag / mag.sum(-1, keepdim=True).clamp_min(1e-300)
    ent = -(row * row.clamp_min(1e-300).log()).sum(-1)
    n_keys = (allowed.sum(-1) if allowed is not None
              else torch.full((w.shape[0],), w.shape[1])).double()
    norm_ent = torch.where(n_keys > 1, ent / n_keys.clamp_min(2).log(), torch.zeros_like(ent))
    total = mag.sum()
    return {"rank": rank, "effective_rank": erank, "size": list(w.shape),
            "entropy": float(norm_ent.mean()),
            "negative_mass": float(mag[w < 0].sum() / total) if total > 0 else 0.0,
            "singular_values": (sv / sv[0]).tolist() if sv[0] > 0 else sv.tolist()}


def _mean(stats: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: sum(s[k] for s in stats) / len(stats)
           for k in ("rank", "effective_rank", "entropy", "negative_mass")}
    out["size"] = stats[0]["size"]
    return out


def rank_report(t: SiteTensors, images: Sequence[int] = (0,), rtol: float | None = None,
                keep_spectra: int = 1) -> dict[str, Any]:
    """Per kind (own, own + local terms when the module has them, then the counterparts) and
    head: the stats of the block's attention matrix, averaged over ``images``. The normalised
    singular values are kept for the first ``keep_spectra`` heads of the first image."""
    kinds = counterpart_kinds(t)
    variants = [(t.own, False)]
    if t.locals:
        variants.append((t.own, True))
    variants += [(k, False) for k in kinds[1:]]
    per_image = [image_slice(t, i) for i in images]
    out: dict[str, Any] = {}
    for kind, with_local in variants:
        name = f"{kind}+local" if with_local else kind
        stats: list[list[dict[str, Any]]] = [[] for _ in range(t.num_heads)]
        for one in per_image:             # one image at a time: N x N per head in memory
            w = attention_weights(one, kind)[0]                              # (H, N, Nk)
            for h in range(t.num_heads):
                allowed = None if t.allowed is None else t.allowed[min(h, t.allowed.shape[0] - 1)]
                local = head_local_weights(one, head=h)[0] if with_local else 0
                stats[h].append(matrix_stats(w[h] + local, allowed, rtol))
        heads = []
        for h, per_head in enumerate(stats):
            mean = _mean(per_head)
            if h < keep_spectra:
                mean["singular_values"] = per_head[0]["singular_values"]
            heads.append(mean)
        out[name] = {"heads": heads, "mean": _mean(heads)}
    return out
