"""Explicit attention maps: the N x N weights that the linear forms never materialise.

Every attention site (one block's attention, see ``analysis.sites``) is reduced to a
``SiteTensors``: its queries, keys and values in *image layout* (queries are the block's tokens,
keys the tokens it can attend to), which keys each query may see, and the terms that are not a
weighted sum over keys. From it, ``attention_weights`` gives the explicit weights of the module's
own attention or of a counterpart through the same q and k:

- ``inline``: w_ij = (s/n) (phi(q_i).phi(k_j) - phi(q_i).mean phi(K)) + 1/n (rows sum to 1,
  may be negative; n = keys the query sees, s = d**-0.5),
- ``linear``: relu(q_i).relu(k_j) / (sum_j relu(q_i).relu(k_j) + eps),
- ``softmax``: softmax_j(s q_i.k_j + bias_ij) (the module's bias for its own softmax only),
- ``l2vit``: relu(q_i).relu(k_j) t / clamp(sum_j relu(q_i).relu(k_j), min) (L2ViT's LGA).

``site_output`` multiplies the weights with V and adds the local terms (InLine's predicted 3x3
residual, CSwin's LePE), which are per-channel 3x3 convolutions written here as explicit
per-channel N x N matrices too; the tests compare that product with the module's real output.
Everything is float64: the maps are meant for measuring (rank, equal rows), not for speed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = [
    "KINDS",
    "LocalTerm",
    "SiteTensors",
    "TokenLimitError",
    "attention_weights",
    "check_token_limit",
    "counterpart_kinds",
    "head_local_weights",
    "image_slice",
    "site_output",
]

KINDS = ("inline", "linear", "softmax", "l2vit")
# The counterparts drawn beside a module's own attention ("through the same weights"); l2vit needs
# the module's temperature, so it is only ever a module's own kind.
COUNTERPARTS = ("inline", "linear", "softmax")
DEFAULT_MAX_TOKENS = 4096

_PHI: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "exp": lambda t: torch.exp(0.2 * t),  # the official InLine-Swin option
}


class TokenLimitError(ValueError):
    """Explicit maps of this size were refused (``--max-tokens``)."""


def check_token_limit(label: str, n_queries: int, n_keys: int, max_tokens: int) -> None:
    """Refuse explicit maps over more than ``max_tokens`` queries or keys: they hold
    n_queries x n_keys weights per head (and per channel for the local terms)."""
    n = max(n_queries, n_keys)
    if n > max_tokens:
        mb = n_queries * n_keys * 8 / 2 ** 20
        raise TokenLimitError(
            f"block {label}: its attention has {n_queries} queries x {n_keys} keys, over the "
            f"limit of {max_tokens} tokens for explicit N x N attention maps ({mb:.0f} MB per "
            f"head in float64). Use a smaller --size or a later block, or raise --max-tokens.")


@dataclass
class LocalTerm:
    """A per-channel 3x3 convolution over the token grid, zero-padded, as explicit weights.

    ``out[i, c] += sum_(dy, dx) kernels[b, c, dy + 1, dx + 1] * V[i + (dy, dx), c]`` for the
    grid tokens (after ``prefix`` leading tokens, e.g. DeiT's cls token, which get nothing).
    ``groups`` (C, h*w): a neighbour counts only within the same group (CSwin's stripes, whose
    LePE convolution is zero-padded at the stripe borders).
    """

    kernels: torch.Tensor                  # (B, C, 3, 3)
    hw: tuple[int, int]
    prefix: int = 0
    groups: torch.Tensor | None = None     # (C, h*w) long
    name: str = "local"

    def weights(self, rows: torch.Tensor, n_keys: int,
                channels: slice | None = None) -> torch.Tensor:
        """(B, C', len(rows), n_keys) explicit weights of the query tokens ``rows``."""
        kernels = self.kernels if channels is None else self.kernels[:, channels]
        groups = None
        if self.groups is not None:
            groups = self.groups if channels is None else self.groups[channels]
        b, c = kernels.shape[:2]
        h, w = self.hw
        out = kernels.new_zeros(b, c, len(rows), n_keys)
        g = rows - self.prefix
        y, x = torch.div(g, w, rounding_mode="floor"), g % w
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                y2, x2 = y + dy, x + dx
                ok = (g >= 0) & (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w)
                r = ok.nonzero()[:, 0]
                if not len(r):
                    continue
                key = y2[r] * w + x2[r]
                val = kernels[:, :, dy + 1, dx + 1, None].expand(b, c, len(r))
                if groups is not None:
                    val = val * (groups[:, g[r]] == groups[:, key]).to(val.dtype)
                out[:, :, r, key + self.prefix] += val
        return out


@dataclass
class SiteTensors:
    """One attention site in image layout (see the module docstring). Heads are (B, H, N, d).

    Queries: ``query_prefix`` tokens then the ``query_hw`` grid; keys: ``key_prefix`` tokens, the
    ``key_hw`` grid, then any extra keys with no grid position (the zero padding that window
    attention attends to). ``expected`` is the module's own output for the queries, which
    ``post`` (the module's output projection, or None) maps ``site_output`` onto.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    own: str
    scale: float
    query_hw: tuple[int, int]
    key_hw: tuple[int, int]
    query_prefix: int = 0
    key_prefix: int = 0
    phi: str = "identity"
    allowed: torch.Tensor | None = None          # (1 or H, Nq, Nk) bool
    bias: torch.Tensor | None = None             # (1 or B, 1 or H, Nq, Nk), own softmax only
    temperature: torch.Tensor | None = None      # (H,), own l2vit only
    clamp_min: float = 100.0
    eps: float = 1e-6
    locals: list[LocalTerm] = field(default_factory=list)
    const: torch.Tensor | None = None            # (B, Nq, C): terms independent of V
    expected: torch.Tensor | None = None         # (B, Nq, C_out)
    post: Callable[[torch.Tensor], torch.Tensor] | None = None
    description: str = ""

    @property
    def num_heads(self) -> int:
        return self.q.shape[1]

    @property
    def head_dim(self) -> int:
        return self.q.shape[-1]

    @property
    def n_queries(self) -> int:
        return self.q.shape[2]

    @property
    def n_keys(self) -> int:
        return self.k.shape[2]

    def head_channels(self, head: int) -> slice:
        d = self.head_dim
        return slice(head * d, (head + 1) * d)

    def grid_query(self, y: int, x: int) -> int:
        """Token index of grid position (y, x) in the query layout."""
        return self.query_prefix + y * self.query_hw[1] + x

    def key_grid(self, w: torch.Tensor) -> torch.Tensor:
        """(..., Nk) weights -> (..., hk, wk): the keys that have a grid position."""
        hk, wk = self.key_hw
        return w[..., self.key_prefix:self.key_prefix + hk * wk].unflatten(-1, (hk, wk))


def image_slice(t: SiteTensors, image: int) -> SiteTensors:
    """``t`` for one image of the batch (maps of one image at a time keep memory at N x N per
    head)."""
    i = slice(image, image + 1)

    def one(x: torch.Tensor | None) -> torch.Tensor | None:
        return x if x is None or x.shape[0] == 1 else x[i]

    locals_ = [dataclasses.replace(lt, kernels=lt.kernels[i]) for lt in t.locals]
    return dataclasses.replace(t, q=t.q[i], k=t.k[i], v=t.v[i], bias=one(t.bias),
                               locals=locals_, const=one(t.const), expected=one(t.expected))


def counterpart_kinds(t: SiteTensors) -> list[str]:
    """The module's own kind first, then the counterparts through the same q and k."""
    return [t.own] + [k for k in COUNTERPARTS if k != t.own]


def _rows(t: SiteTensors, rows: torch.Tensor | None) -> torch.Tensor:
    return torch.arange(t.n_queries) if rows is None else torch.as_tensor(rows).long().view(-1)


def attention_weights(t: SiteTensors, kind: str, rows: torch.Tensor | None = None,
                      q: torch.Tensor | None = None) -> torch.Tensor:
    """Explicit (B, H, n, Nk) weights of ``kind`` for the query tokens ``rows`` (all if None).

    ``q`` (B, H, n, d) replaces the site's queries of those rows (the injectivity analysis
    feeds scaled and collinear queries through the keys of the block).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; use one of {KINDS}")
    rows = _rows(t, rows)
    if q is None:
        q = t.q[:, :, rows]
    k = t.k
    allowed = None if t.allowed is None else t.allowed[:, rows]
    a = None if allowed is None else allowed.to(q.dtype)
    if kind == "softmax":
        logits = t.scale * (q @ k.transpose(-2, -1))
        if kind == t.own and t.bias is not None:
            logits = logits + t.bias[..., rows, :]
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        return logits.softmax(dim=-1)
    if kind == "inline":
        phi = _PHI[t.phi] if t.own == "inline" else _PHI["identity"]
        qf, kf = phi(q), phi(k)
        s = t.head_dim ** -0.5  # InLine's scale, whatever the module's softmax scale
        if a is None:
            n = k.shape[-2]
            k_mean = kf.mean(dim=-2, keepdim=True)                       # (B, H, 1, d)
            centred = qf @ kf.transpose(-2, -1) - qf @ k_mean.transpose(-2, -1)
            return (s / n) * centred + 1.0 / n
        n = a.sum(dim=-1, keepdim=True)                                  # (1|H, n, 1)
        k_mean = (a @ kf) / n                                            # (B, H, n, d)
        centred = qf @ kf.transpose(-2, -1) - (qf * k_mean).sum(-1, keepdim=True)
        return ((s / n) * centred + 1.0 / n) * a
    qf, kf = F.relu(q), F.relu(k)
    num = qf @ kf.transpose(-2, -1)
    if a is not None:
        num = num * a
    if kind == "linear":
        denom = num.sum(dim=-1, keepdim=True) + t.eps
        # eps = 0 (the injectivity analysis): a row whose features are all zero gets no weight.
        return torch.where(denom > 0, num / denom.clamp_min(1e-300), torch.zeros_like(num))
    if t.temperature is None:
        raise ValueError("the l2vit kind needs the module's temperature (own kind only)")
    denom = num.sum(dim=-1, keepdim=True).clamp(min=t.clamp_min)
    return num * t.temperature.view(1, -1, 1, 1) / denom


def head_local_weights(t: SiteTensors, rows: torch.Tensor | None = None,
                       head: int | None = None) -> torch.Tensor | None:
    """The local terms' weights averaged over a head's channels (over all channels when
    ``head`` is None): (B, n, Nk), or None when the site has no local term. A per-channel
    convolution has no single map per head; the channel mean is what it does to a key on
    average."""
    if not t.locals:
        return None
    rows = _rows(t, rows)
    ch = None if head is None else t.head_channels(head)
    total = None
    for term in t.locals:
        w = term.weights(rows, t.n_keys, ch).mean(dim=1)
        total = w if total is None else total + w
    return total


def site_output(t: SiteTensors, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n, C): explicit weights times V plus the local terms and constants, for ``rows``;
    ``t.post`` (the output projection) is applied when the module has one. This is what the
    module computed, if the maps are right."""
    rows = _rows(t, rows)
    w = attention_weights(t, t.own, rows)
    b, h, n, _ = w.shape
    out = (w @ t.v).transpose(1, 2).reshape(b, n, h * t.head_dim)
    v_tokens = t.v.transpose(1, 2).reshape(b, t.n_keys, h * t.head_dim)       # (B, Nk, C)
    for term in t.locals:
        lw = term.weights(rows, t.n_keys)                                     # (B, C, n, Nk)
        out = out + torch.einsum("bcnk,bkc->bnc", lw, v_tokens)
    if t.const is not None:
        out = out + t.const[:, rows]
    if t.post is not None:
        out = t.post(out)
    return out
