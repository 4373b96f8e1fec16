"""Attention kernels shared by every family (the one place they live).

Functional kernels take per-head tensors ``(B, heads, N, d)`` and return the same layout; the
modules wrap them with the official parameter names (``qkv`` or ``q``/``kv``, ``proj``,
``residual``, ``relative_position_bias_table``, ``get_v``, ``temperature``) so released
checkpoints load unchanged.

Numerics: under autocast the linear-attention reductions (K^T V, means, sums, denominators) run in
fp32. The official InLine code relies only on splitting sqrt(s/N) onto K and V, which still
overflows fp16 for large activations; computing the small d x d state in fp32 costs little.

Tracing: the linear-attention kernels are FX leaves (``torch.fx.wrap`` for ``torch.fx`` and
timm's ``register_notrace_function`` for timm's tracer): they switch autocast off on the input's
device and loop over the batch, which symbolic tracing cannot follow. torch.export traces through
them. Window and stripe padding and the Swin shift are computed from sizes without Python
branches on them (see ``_helpers.is_static_zero``), so exported graphs hold for any input size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import is_exporting, register_notrace_function
from torch import nn

from ._helpers import is_static_zero, pad_amount, pad_hw, unpad_hw

__all__ = [
    "ATTENTION_LETTERS",
    "GlobalAttention",
    "L2ViTLinearAttention",
    "LePEAttention",
    "LocalConcentrationModule",
    "LocalResidualPredictor",
    "WindowAttention",
    "global_linear_attention",
    "injective_linear_attention",
    "inline_attention",
    "l2vit_linear_attention",
    "local_residual",
    "parse_attention_types",
    "plain_linear_attention",
    "predicted_local_residual",
    "shifted_window_attention",
    "softmax_attention",
]

# Per-stage attention letters, as in the official strings such as 'IIIS'.
ATTENTION_LETTERS = {"I": "inline", "L": "linear", "S": "softmax"}


def parse_attention_types(spec: str | Sequence[str], depths: Sequence[int]) -> list[list[str]]:
    """Expand a per-stage spec into one attention type per block.

    ``spec`` has one letter per stage ('IIIS'), or per block within a stage given as a list
    (``['I', 'I', 'II' + 'S' * 16, 'S']``); letters: I = InLine, L = plain linear, S = softmax.
    The official mixed-stage spelling is accepted too: an ``M`` stage letter followed, after the
    stage letters, by a count n, meaning n InLine blocks then softmax ('IIMS2' = InLine-Swin-B).
    """
    if isinstance(spec, str) and len(spec) > len(depths) and spec[len(depths):].isdigit():
        letters, n = spec[:len(depths)], int(spec[len(depths):])
        if "M" not in letters:
            raise ValueError(f"attention spec {spec!r}: a trailing count needs an 'M' stage")
        spec = ["I" * min(n, d) + "S" * max(d - n, 0) if c == "M" else c
                for c, d in zip(letters, depths, strict=True)]
    elif isinstance(spec, str) and "M" in spec:
        raise ValueError(f"attention spec {spec!r}: an 'M' stage needs the number of leading "
                         f"InLine blocks after the {len(depths)} stage letters, e.g. 'IIMS2'")
    if len(spec) != len(depths):
        raise ValueError(f"attention spec {spec!r} has {len(spec)} stages, the model has "
                         f"{len(depths)}; give one letter per stage")
    out = []
    for stage, (letters, depth) in enumerate(zip(spec, depths, strict=True)):
        letters = letters * depth if len(letters) == 1 else letters
        if len(letters) != depth:
            raise ValueError(f"stage {stage}: {letters!r} names {len(letters)} blocks, the stage "
                             f"has {depth}")
        bad = set(letters) - set(ATTENTION_LETTERS)
        if bad:
            raise ValueError(f"unknown attention letter(s) {sorted(bad)} in {spec!r}; use "
                             f"{', '.join(f'{k}={v}' for k, v in ATTENTION_LETTERS.items())}")
        out.append([ATTENTION_LETTERS[c] for c in letters])
    return out


# --------------------------------------------------------------------------------------------
# Functional kernels
# --------------------------------------------------------------------------------------------

def _no_autocast(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for ``t``'s device where it is on. Nothing otherwise: torch.export records
    even a needless autocast region as a node its serialiser cannot save (.pt2), and 'meta'
    (where the benchmark counts FLOPs without computing) has no autocast."""
    device = t.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def _fp32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      bias: torch.Tensor | None = None, scale: float | None = None,
                      dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v through SDPA (fused kernels where the backend has them)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p,
                                          scale=scale)


@torch.fx.wrap
@register_notrace_function
def plain_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           eps: float = 1e-6) -> torch.Tensor:
    """Linear attention normalised by the row sum: phi(q) (phi(K)^T V) / (phi(q) . sum phi(K)).

    ``q`` and ``k`` must already be non-negative (the caller applies the kernel, ReLU here).
    Not injective: q and 2q give the same weights (the division removes the scale).
    """
    dtype = q.dtype
    with _no_autocast(q):
        q, k, v = _fp32(q, k, v)
        kv = k.transpose(-2, -1) @ v                             # (B, h, d, d)
        denom = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, N, 1)
        out = (q @ kv) / (denom + eps)
    return out.to(dtype)


def _inline_state(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (M, mean(V)) with out = q M + mean(V) equal to InLine attention (see below)."""
    n = k.shape[-2]
    k_mean = k.mean(dim=-2, keepdim=True, dtype=torch.float32)
    v_mean = v.mean(dim=-2, keepdim=True, dtype=torch.float32)
    kv = k.float().transpose(-2, -1) @ v.float()
    return kv * (scale / n) - scale * (k_mean.transpose(-2, -1) @ v_mean), v_mean


@torch.fx.wrap
@register_notrace_function
def injective_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """InLine attention: w_ij = (s/N) (q_i.k_j - q_i.mean(K)) + 1/N, rows sum to 1.

    Linear form: out = q (s/N) K^T V + (1 - s q.mean(K)) mean(V), computed as the equal
    ``q M + mean(V)`` with the d x d matrix ``M = (s/N) K^T V - s mean(K)^T mean(V)``: one pass
    over q instead of three. The state is reduced in fp32 (the official code only splits
    sqrt(s/N) onto K and V, which still overflows fp16 for large activations).
    """
    dtype = q.dtype
    with _no_autocast(q):
        m, v_mean = _inline_state(q, k, v, scale)
        out = torch.matmul(q.float(), m) + v_mean
    return out.to(dtype)


@torch.fx.wrap
@register_notrace_function
def inline_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                     kernels: torch.Tensor | None = None, hw: tuple[int, int] | None = None,
                     num_prefix_tokens: int = 0) -> torch.Tensor:
    """The InLine attention op on (B, N, C) tokens: injective attention per head plus, when
    ``kernels`` (B, C, 3, 3) are given, the predicted 3x3 local residual on V's ``hw`` grid
    (the last N - ``num_prefix_tokens`` tokens). Returns (B, N, C), ready for ``proj``.

    Equal to ``merge(injective_linear_attention(heads(q), heads(k), heads(v))) +
    pad(predicted_local_residual(grid(v), kernels))``, written to touch the N x C data few times
    (profiled: the unfused form makes ~30 passes and allocations over it):
    the residual is one depthwise convolution over the batch's (sample, channel) maps (groups =
    B*C, as in the official code) whose bias carries mean(V), and each head's ``q M`` is
    accumulated into its slice of that output in place. Inputs may be strided views of a fused
    qkv projection.
    """
    b, n, c = q.shape
    d = c // num_heads
    p = num_prefix_tokens
    dtype = q.dtype

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, num_heads, d).transpose(1, 2)

    with _no_autocast(q):
        m, v_mean = _inline_state(heads(q), heads(k), heads(v), d ** -0.5)
        v_mean = v_mean.reshape(b, 1, c)
        if kernels is None:
            base = v_mean.expand(b, n, c)
        else:
            # One depthwise convolution over the B*C (sample, channel) maps, as the official
            # code does: one kernel call for the batch instead of one per sample (on CPU the
            # same results bit for bit and 1.03-1.2x faster in training at batch 16), on a
            # channels-last (H, W, B*C) grid: a view of V's tokens for one sample, one copy for
            # several.
            h, w = hw
            grid = v[:, p:].float().view(b, h, w, c).permute(1, 2, 0, 3).reshape(1, h, w, b * c)
            # (view, not unsqueeze: the leading stride must be the largest, or the strides
            # read as NCHW and the convolution copies and runs 3x slower)
            res = F.conv2d(grid.permute(0, 3, 1, 2), kernels.float().reshape(b * c, 1, 3, 3),
                           v_mean.reshape(b * c), padding=1, groups=b * c)
            # (1, B*C, H, W) -> (B, N - p, C), a view: the output keeps the input's
            # channels-last layout, so samples interleave; the sum with q M makes it dense.
            base = res[0].permute(1, 2, 0).reshape(h, w, b, c).permute(2, 0, 1, 3)
            base = base.reshape(b, n - p, c)
            if p:
                base = torch.cat([v_mean.expand(b, p, c), base], dim=1)
        q = q.float()
        if torch.is_grad_enabled() and (q.requires_grad or m.requires_grad
                                        or base.requires_grad):
            out = base + (heads(q) @ m).transpose(1, 2).reshape(b, n, c)
        else:
            # In place, head by head: BLAS reads q's and writes out's strided column blocks.
            out = base.contiguous()
            for i in range(b):
                for j in range(num_heads):
                    cols = slice(j * d, (j + 1) * d)
                    out[i, :, cols].addmm_(q[i, :, cols], m[i, j])
    return out.to(dtype)


@torch.fx.wrap
@register_notrace_function
def l2vit_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           temperature: torch.Tensor, clamp_min: float = 100.0) -> torch.Tensor:
    """L2ViT global attention: relu q, k; (q (K^T V) t) / clamp(q . sum K, min).

    ``temperature`` has shape (heads, 1, 1); the clamp keeps the denominator from vanishing.
    """
    dtype = q.dtype
    with _no_autocast(q):
        q, k, v = _fp32(F.relu(q), F.relu(k), v)
        kv = (k.transpose(-2, -1) @ v) * temperature.float()
        denom = (q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)).clamp(min=clamp_min)
        out = (q @ kv) / denom
    return out.to(dtype)


def predicted_local_residual(v: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Depthwise 3x3 convolution with one kernel per (sample, channel), padding 1.

    ``v``: (B, C, H, W); ``kernels``: (B, C, 3, 3). Equal to
    ``F.conv2d(v.reshape(1, B*C, H, W), kernels.reshape(B*C, 1, 3, 3), padding=1, groups=B*C)``
    (the official form), written as nine shifted multiply-adds: the grouped convolution with
    groups=B*C is very slow in training on common backends (official repo, issue #7).
    """
    _, _, h, w = v.shape
    vp = F.pad(v, (1, 1, 1, 1))
    kernels = kernels.to(v.dtype)
    out = vp[:, :, 0:h, 0:w] * kernels[:, :, 0, 0, None, None]
    for i in range(3):
        for j in range(3):
            if i == 0 and j == 0:
                continue
            out = out + vp[:, :, i:i + h, j:j + w] * kernels[:, :, i, j, None, None]
    return out


def local_residual(v_grid: torch.Tensor, kernels: torch.Tensor, num_prefix_tokens: int = 0
                   ) -> torch.Tensor:
    """The predicted 3x3 residual on V's (B, C, H, W) grid, as (B, P + H*W, C) tokens with zeros
    on the P = ``num_prefix_tokens`` tokens outside the grid."""
    res = predicted_local_residual(v_grid, kernels).flatten(2).transpose(1, 2)
    return F.pad(res, (0, 0, num_prefix_tokens, 0)) if num_prefix_tokens else res


def global_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                            hw: tuple[int, int], kernels: torch.Tensor | None = None,
                            injective: bool = True, num_prefix_tokens: int = 0,
                            v_grid: torch.Tensor | None = None) -> torch.Tensor:
    """InLine's global attention on (B, N, C) q, k, v, with the predicted local residual when
    ``kernels`` (B, C, 3, 3) are given; returns (B, N, C), ready for ``proj``.

    ``injective``: the InLine op (``inline_attention``; q and k already mapped by its feature
    map). Otherwise, for the ablation without it and for plain linear attention, the row-sum
    normaliser on ReLU features (it needs them non-negative) plus ``local_residual`` on
    ``v_grid``, V's (B, C, H, W) grid if the caller has made it already (else made here).
    """
    if injective:
        return inline_attention(q, k, v, num_heads, kernels, hw, num_prefix_tokens)
    b, n, c = q.shape
    qh, kh, vh = (t.view(b, n, num_heads, c // num_heads).transpose(1, 2) for t in (q, k, v))
    out = plain_linear_attention(F.relu(qh), F.relu(kh), vh).transpose(1, 2).reshape(b, n, c)
    if kernels is not None:
        if v_grid is None:
            v_grid = v[:, num_prefix_tokens:].transpose(1, 2).reshape(b, c, hw[0], hw[1])
        out = out + local_residual(v_grid, kernels, num_prefix_tokens)
    return out


def _pad_hw(x: torch.Tensor, mult_h: int, mult_w: int) -> tuple[torch.Tensor, int, int]:
    """Zero-pad a (B, H, W, C) map at the bottom/right to multiples of (mult_h, mult_w); returns
    the map and the padding added to H and W."""
    _, h, w, _ = x.shape
    padded = pad_hw(x, mult_h, mult_w, channels_last=True)
    return padded, pad_amount(h, mult_h), pad_amount(w, mult_w)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of a permuted window layout. ``reshape`` / ``contiguous`` would first ask
    whether it is contiguous already, which depends on whether a window count is 1: under
    torch.export that question fixes the count to the example's."""
    return x.clone(memory_format=torch.contiguous_format)


def _window_partition(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, wh * ww, C)."""
    b, h, w, c = x.shape
    nh, nw = h // wh, w // ww
    x = x.view(b, nh, wh, nw, ww, c).permute(0, 1, 3, 2, 4, 5)
    return _dense(x).view(b * nh * nw, wh * ww, c)


def _window_reverse(x: torch.Tensor, wh: int, ww: int, b: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, wh * ww, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    x = x.view(b, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return _dense(x).view(b, h, w, c)


def _swin_shift(h: int, w: int, window: int, shift: int) -> int:
    """The shift Swin applies to an (h, w) map: ``shift``, or 0 once the map fits in one window
    (min(h, w) <= window, the official rule). sym_min / sym_max are min / max on ints and keep a
    traced size symbolic, so an exported graph applies the rule at every size."""
    return shift * torch.sym_min(1, torch.sym_max(0, torch.sym_min(h, w) - window))


def _roll_hw(x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """``torch.roll(x, (-sh, -sw), dims=(1, 2))`` for 0 <= sh <= H, 0 <= sw <= W, as slices and
    concatenations: the same copies, but the shifts may be symbolic (the ONNX exporter's roll
    takes constant shifts only)."""
    x = torch.cat([x[:, sh:], x[:, :sh]], dim=1)
    return torch.cat([x[:, :, sw:], x[:, :, :sw]], dim=2)


def _shift_mask(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive (nW, N, N) mask: -100 between tokens that were not neighbours before the roll.

    Rows [0, h - window), [h - window, h - shift) and [h - shift, h) of the rolled map (and the
    same for columns) came from different places; each token's region follows from its
    coordinates, so that sizes and shift may be symbolic.
    """
    def region(n: int) -> torch.Tensor:
        r = torch.arange(n, device=device)
        return (r >= n - window).long() + (r >= n - shift).long()

    ids = region(h)[:, None] * 3 + region(w)[None, :]
    ids = _window_partition(ids[None, :, :, None], window, window).squeeze(-1)
    return torch.where(ids.unsqueeze(1) != ids.unsqueeze(2), -100.0, 0.0)


def shifted_window_attention(x: torch.Tensor, attn: WindowAttention, shift: int = 0
                             ) -> torch.Tensor:
    """Window attention over any (B, H, W, C) map: zero-pad to a multiple of the window, roll by
    ``shift`` with the Swin mask, attend within windows, undo, crop. Returns (B, H, W, C).

    As in Swin, a map that fits in one window (min(H, W) <= window) is not shifted.
    """
    b, h, w, _ = x.shape
    ws = attn.window_size
    x = pad_hw(x, ws, ws, channels_last=True)
    hp, wp = x.shape[1], x.shape[2]
    ph, pw = pad_amount(h, ws), pad_amount(w, ws)
    mask = None
    if shift:
        shift = _swin_shift(h, w, ws, shift)
    if not is_static_zero(shift):
        x = _roll_hw(x, shift, shift)
        mask = _shift_mask(hp, wp, ws, shift, x.device)
    y = attn(_window_partition(x, ws, ws), mask=mask)
    y = _window_reverse(y, ws, ws, b, hp, wp)
    if not is_static_zero(shift):
        y = _roll_hw(y, hp - shift, wp - shift)
    return unpad_hw(y, ph, pw, channels_last=True)


# --------------------------------------------------------------------------------------------
# Modules (official parameter names)
# --------------------------------------------------------------------------------------------

# Feature maps phi for InLine (the official Swin file offers these four).
_KERNELS = {
    "identity": lambda t: t,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "exp": lambda t: torch.exp(0.2 * t),
}
_KERNEL_ALIASES = {"leakyrelu": "leaky_relu"}  # the official config spelling


class LocalResidualPredictor(nn.Sequential):
    """InLine's predictor of the local residual (``residual.{0,2}`` in the official checkpoints):
    two head-grouped 1x1 convolutions map the tokens' mean to one 3x3 depthwise kernel per
    (sample, channel). Called as a module: (B, C, 1) means -> (B, 9C, 1)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__(
            nn.Conv1d(dim, dim, kernel_size=1, groups=num_heads),
            nn.GELU(),
            nn.Conv1d(dim, dim * 9, kernel_size=1, groups=num_heads),
        )

    def kernels(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, C, 3, 3) kernels, predicted from their mean over N."""
        b, _, c = tokens.shape
        return self(tokens.mean(dim=1).unsqueeze(-1)).view(b, c, 3, 3)


class GlobalAttention(nn.Module):
    """Global attention over all tokens: InLine, plain linear or softmax.

    ``mode='inline'``: injective normalisation and the predicted local residual, each of which can
    be switched off (``injective``, ``local``) for the paper's ablation rows; with
    ``injective=False`` the normaliser is the row sum of ReLU features (plain linear attention).
    ``mode='linear'``: plain linear attention (ReLU kernel, row-sum normaliser), no residual.
    ``mode='softmax'``: scaled dot-product softmax attention.

    ``split_kv=True`` names the projections ``q`` and ``kv`` (PVT) instead of ``qkv``.
    Tokens are (B, N, C) with ``num_prefix_tokens`` leading tokens (cls) outside the H x W grid;
    they take part in the attention and the mean but not in the local convolution.
    """

    def __init__(self, dim: int, num_heads: int, mode: str = "inline", qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, split_kv: bool = False,
                 injective: bool | None = None, local: bool | None = None,
                 kernel: str = "identity", num_prefix_tokens: int = 0):
        super().__init__()
        if mode not in ("inline", "linear", "softmax"):
            raise ValueError(f"unknown attention mode {mode!r}; use inline, linear or softmax")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.mode = mode
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.num_prefix_tokens = num_prefix_tokens
        self.injective = (mode == "inline") if injective is None else injective
        self.local = (mode == "inline") if local is None else local
        if mode != "inline" and (injective or local):
            raise ValueError("injective / local apply to mode='inline' only")
        kernel = _KERNEL_ALIASES.get(kernel, kernel)
        if kernel not in _KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; use one of {sorted(_KERNELS)}")
        # InLine's phi is the identity in every released model; the row-sum form needs phi >= 0.
        self.kernel = kernel if mode == "inline" and self.injective else "relu"
        self.split_kv = split_kv
        if split_kv:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if mode == "inline" and self.local:
            self.residual = LocalResidualPredictor(dim, num_heads)

    @classmethod
    def for_block(cls, dim: int, num_heads: int, attn_type: str, inline_injective: bool = True,
                  inline_local: bool = True, **kwargs: Any) -> GlobalAttention:
        """The attention of a block of type ``attn_type`` (a mode): the model-wide InLine ablation
        switches go to the InLine blocks only (the other modes reject them)."""
        ablation = (dict(injective=inline_injective, local=inline_local)
                    if attn_type == "inline" else {})
        return cls(dim, num_heads, mode=attn_type, **ablation, **kwargs)

    def _phi(self, t: torch.Tensor) -> torch.Tensor:
        return _KERNELS[self.kernel](t)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, hw: tuple[int, int],
                mean_source: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (B, N, C) tokens, ``hw``: the grid of the N - prefix tokens.
        ``mean_source``: tokens whose mean predicts the local kernels (default ``x``)."""
        b, n, c = x.shape
        if self.split_kv:
            q = self.q(x)
            k, v = self.kv(x).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.mode == "softmax":
            out = softmax_attention(self._heads(q), self._heads(k), self._heads(v),
                                    dropout_p=self.attn_drop if self.training else 0.0)
            out = out.transpose(1, 2).reshape(b, n, c)
        else:
            kernels = None
            if self.local:
                kernels = self.residual.kernels(x if mean_source is None else mean_source)
            if self.injective:
                q, k = self._phi(q), self._phi(k)
            out = global_linear_attention(q, k, v, self.num_heads, hw, kernels, self.injective,
                                          self.num_prefix_tokens)
        return self.proj_drop(self.proj(out))


class WindowAttention(nn.Module):
    """Swin window softmax attention with a relative position bias (set ``rel_pos=False`` for
    plain window attention, as in L2ViT's LWA). Input (B*nW, N, C), N = window_size**2."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, rel_pos: bool = True):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_drop = attn_drop
        if rel_pos:
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * window_size - 1) ** 2, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index",
                                 relative_position_index(window_size), persistent=True)
        else:
            self.relative_position_bias_table = None
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = None
        if self.relative_position_bias_table is not None:
            idx = self.relative_position_index.view(-1)
            bias = self.relative_position_bias_table[idx].view(n, n, -1).permute(2, 0, 1)
            bias = bias.unsqueeze(0).to(q.dtype)
        if mask is not None:
            nw = mask.shape[0]
            m = mask.to(q.dtype).unsqueeze(1)  # (nW, 1, N, N)
            bias = m if bias is None else bias + m
            bias = bias.repeat(bw // nw, 1, 1, 1)
        elif bias is not None:
            # The batch made explicit: broadcasting from 1 would make torch.export ask whether
            # there is a single window, and fix the answer to the example input's.
            bias = bias.expand(bw, -1, -1, -1)
        out = softmax_attention(q, k, v, bias=bias, scale=self.scale,
                                dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bw, n, c)))


def relative_position_index(window_size: int) -> torch.Tensor:
    """(N, N) index into the (2w-1)^2 bias table, Swin's layout."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size),
                                        indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return rel[:, :, 0] * (2 * window_size - 1) + rel[:, :, 1]


class L2ViTLinearAttention(nn.Module):
    """L2ViT linear global attention (LGA): qkv with bias, ReLU features, learnable per-head
    temperature (init d**-0.5), denominator clamped at ``clamp_min``. Input (B, N, C)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0,
                 clamp_min: float = 100.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.clamp_min = clamp_min
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), self.head_dim ** -0.5))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = l2vit_linear_attention(q, k, v, self.temperature, self.clamp_min)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class LocalConcentrationModule(nn.Module):
    """L2ViT's LCM: depthwise 7x7 -> GELU -> BatchNorm -> depthwise 7x7, on (B, C, H, W)."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, padding=pad, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, padding=pad, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.bn(self.act(self.conv1(x))))


class LePEAttention(nn.Module):
    """CSwin cross-shaped softmax attention of one branch with LePE (``get_v``).

    ``branch``: 0 = vertical stripes (full height, width ``split_size``), 1 = horizontal stripes,
    -1 = the whole map (CSwin's last stage). Input q, k, v as (B, N, C_branch) on grid ``hw``.
    """

    def __init__(self, dim: int, num_heads: int, split_size: int, branch: int,
                 attn_drop: float = 0.0):
        super().__init__()
        if branch not in (-1, 0, 1):
            raise ValueError(f"branch must be -1, 0 or 1, got {branch}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.split_size = split_size
        self.branch = branch
        self.attn_drop = attn_drop
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def stripe(self) -> tuple[int, int]:
        """Stripe (height, width); 0 = full extent."""
        return {-1: (0, 0), 0: (0, self.split_size), 1: (self.split_size, 0)}[self.branch]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]
                ) -> torch.Tensor:
        b, n, c = q.shape
        h, w = hw
        sh, sw = self.stripe()
        # Only the striped side is padded; a full-extent side (0) is one stripe already.
        ph, pw = pad_amount(h, sh or 1), pad_amount(w, sw or 1)
        grids = [pad_hw(t.view(b, h, w, c), sh or 1, sw or 1, channels_last=True)
                 for t in (q, k, v)]
        hp, wp = grids[0].shape[1:3]
        sh, sw = sh or hp, sw or wp
        qw, kw, vw = (_window_partition(g, sh, sw) for g in grids)          # (B*nW, L, C)
        bw, length = qw.shape[:2]
        # LePE: depthwise 3x3 on V within each stripe (zero padding at stripe borders), on a
        # channels-last view. Exported graphs convolve a contiguous copy instead: with a batch of
        # one, the view's memory format depends on whether there is a single stripe, and
        # torch.export would fix that to the example input's.
        v_stripes = vw.transpose(1, 2).reshape(bw, c, sh, sw)
        lepe = self.get_v(_dense(v_stripes) if is_exporting() else v_stripes)
        lepe = lepe.reshape(bw, self.num_heads, self.head_dim, length).transpose(-2, -1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(bw, length, self.num_heads, self.head_dim).transpose(1, 2)

        mask = None
        if not (is_static_zero(ph) and is_static_zero(pw)):
            # Padded positions must not be attended to.
            rows, cols = torch.arange(hp, device=q.device), torch.arange(wp, device=q.device)
            valid = (rows < h)[:, None] & (cols < w)[None, :]
            key_ok = _window_partition(valid[None, :, :, None], sh, sw)[..., 0]  # (nW, L)
            key_ok = key_ok.repeat(b, 1)
            mask = key_ok[:, None, None, :]
        out = softmax_attention(heads(qw), heads(kw), heads(vw), bias=mask, scale=self.scale,
                                dropout_p=self.attn_drop if self.training else 0.0) + lepe
        out = out.transpose(1, 2).reshape(bw, length, c)
        out = unpad_hw(_window_reverse(out, sh, sw, b, hp, wp), ph, pw, channels_last=True)
        return out.view(b, n, c)
