"""What the benchmark measures: timm models (``name:key=value`` specs) and attention ops alone,
with their forward multiply-adds counted on the 'meta' device (free at any size, quadratic
attention included)."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import attention as A  # importing backbones registers its families with timm

from . import flops as _flops  # noqa: F401  (registers the extra FLOP formulas)

__all__ = ["EXTRA_OPS", "OPS", "ModelSpec", "build_model", "make_op", "model_gflops",
           "op_gflops", "parse_model_spec", "square_grid"]

OPS = ("inline", "linear", "l2vit", "softmax", "window")
# Not timed by default: the InLine op as the models computed it before it was fused (separate
# passes for the state, output, head merge and a 3x3 residual of nine shifted multiply-adds).
EXTRA_OPS = ("inline_unfused",)


# ---- model specs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A timm name plus constructor overrides, written ``name:key=value,key=value``."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # as written by the user

    @property
    def label(self) -> str:
        if self.text:
            return self.text
        if not self.kwargs:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.kwargs.items())


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets: ``depths=(1,1),embed_dim=16`` -> two items."""
    items, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [*items, cur]


def parse_model_spec(text: str) -> ModelSpec:
    """``inline_swin_tiny:attn_types=SSSS,global_softmax=True`` -> ModelSpec. Values are Python
    literals where they parse as one (numbers, booleans, tuples), strings otherwise."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"model spec {text!r} has no model name; write NAME[:key=value,...]")
    if name not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models() (this repo's "
                         "models are inline_*/l2vit_*)")
    kwargs: dict[str, Any] = {}
    for item in filter(None, _split_top_level(rest)):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"model spec {text!r}: {item!r} is not key=value")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return ModelSpec(name, kwargs, text)


def build_model(spec: ModelSpec, size: int) -> nn.Module:
    """The model at ``size`` (``img_size`` where the model takes one), no drop path, no weights."""
    kwargs = dict(dict(drop_path_rate=0.0, pretrained=False), **spec.kwargs)
    try:
        return timm.create_model(spec.name, img_size=size, **kwargs)
    except TypeError as e:  # convolutional baselines have no img_size
        if "img_size" not in str(e):
            raise
        return timm.create_model(spec.name, **kwargs)


def model_gflops(spec: ModelSpec, size: int) -> tuple[float, float]:
    """(forward GMACs per image, params in M), counted on the 'meta' device: no memory, no time,
    so quadratic models can be counted at sizes they could never run at."""
    with torch.device("meta"):
        model = build_model(spec, size).eval()
        x = torch.empty(1, 3, size, size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2e9, params


# ---- attention ops ------------------------------------------------------------------------------

def _merge(t: torch.Tensor) -> torch.Tensor:
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def make_op(op: str, heads: int, hw: tuple[int, int], batch: int, dim: int, device: torch.device,
            window: int = 7) -> Callable[[torch.Tensor], torch.Tensor]:
    """One attention op as a function of the packed (B, N, 3C) output of a qkv projection,
    returning the (B, N, C) tensor that enters the output projection."""
    d = dim // heads
    if op == "inline":
        kernels = torch.randn(batch, dim, 3, 3, device=device) * 0.1

        def run(qkv):
            q, k, v = qkv.chunk(3, dim=-1)
            return A.inline_attention(q, k, v, heads, kernels, hw)
        return run

    def split(qkv):
        b, n, _ = qkv.shape
        return qkv.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)

    if op == "linear":
        return lambda qkv: _merge(A.plain_linear_attention(*(F.relu(t) if i < 2 else t
                                                             for i, t in enumerate(split(qkv)))))
    if op == "l2vit":
        temperature = torch.full((heads, 1, 1), d ** -0.5, device=device)
        return lambda qkv: _merge(A.l2vit_linear_attention(*split(qkv), temperature))
    if op == "softmax":
        return lambda qkv: _merge(A.softmax_attention(*split(qkv)))
    if op == "window":
        def run(qkv):
            b, _, c3 = qkv.shape
            x, ph, pw = A._pad_hw(qkv.view(b, hw[0], hw[1], c3), window, window)
            hp, wp = hw[0] + ph, hw[1] + pw
            win = A._window_partition(x, window, window)                       # (B nW, L, 3C)
            out = _merge(A.softmax_attention(*split(win)))
            return A._window_reverse(out, window, window, b, hp, wp)[:, :hw[0], :hw[1]].reshape(
                b, hw[0] * hw[1], dim)
        return run
    if op == "inline_unfused":
        kernels = torch.randn(batch, dim, 3, 3, device=device) * 0.1

        def run(qkv):
            q, k, v = split(qkv)
            out = _merge(A.injective_linear_attention(q, k, v, d ** -0.5))
            grid = _merge(v).transpose(1, 2).reshape(batch, dim, *hw)
            return out + A.predicted_local_residual(grid, kernels).flatten(2).transpose(1, 2)
        return run
    raise ValueError(f"unknown attention op {op!r}; use one of {OPS + EXTRA_OPS}")


def square_grid(tokens: int) -> tuple[int, int]:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"--tokens {tokens} is not a square number; the ops run on a square "
                         f"grid (e.g. {side * side} or {(side + 1) ** 2})")
    return side, side


def op_gflops(op: str, tokens: int, dim: int, heads: int, batch: int) -> float:
    """Forward GFLOPs (multiply-adds) of one op call, counted on the 'meta' device."""
    with torch.device("meta"):
        fn = make_op(op, heads, square_grid(tokens), batch, dim, torch.device("meta"))
        qkv = torch.empty(batch, tokens, 3 * dim)
    with FlopCounterMode(display=False) as counter:
        fn(qkv)
    return counter.get_total_flops() / 2e9
