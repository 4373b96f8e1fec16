"""Finding a model's attention modules, capturing what they see, and rebuilding their attention.

Attention modules are found by type (``backbones.attention.GlobalAttention``, ``WindowAttention``,
``L2ViTLinearAttention``, ``LePEAttention`` and InLine-CSwin's ``InLineBranch``) and named
``stage.index`` from the model's ``feature_info`` (the stage a module lives in) and the first
numeric part of its path inside the stage (the block). A forward hook records each module's inputs
and output; the attention is then recomputed from those inputs with the module's own projection
weights and parameters (``qkv`` or ``q``/``kv``, ``residual``, ``get_v``, bias tables,
``temperature``), never through the backbones' private helpers, so that refactoring their insides
does not change what is measured. ``SiteTensors.expected`` keeps the module's real output to check
the rebuilt maps against.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .maps import LocalTerm, SiteTensors, check_token_limit

__all__ = [
    "AttentionSite",
    "Call",
    "attention_module_types",
    "build_site_tensors",
    "capture",
    "find_sites",
    "select_sites",
    "window_layout",
]


def attention_module_types() -> tuple[type[nn.Module], ...]:
    """The attention module classes of the backbones (resolved at call time, so that a class
    that moves is looked up where it is now)."""
    from backbones import attention as A

    types = [A.GlobalAttention, A.WindowAttention, A.L2ViTLinearAttention, A.LePEAttention]
    try:
        from backbones.inline_cswin import InLineBranch
        types.append(InLineBranch)
    except ImportError:  # pragma: no cover - only if the family drops the class
        pass
    return tuple(types)


@dataclass
class AttentionSite:
    """The attention of one block: one module, or CSwin's two cross-shaped branches."""

    label: str                               # "stage.index"
    stage: int
    index: int
    block_name: str                          # module path of the block
    modules: list[tuple[str, nn.Module]] = field(default_factory=list)

    @property
    def module_types(self) -> str:
        return "+".join(type(m).__name__ for _, m in self.modules)


def _int_part(part: str) -> bool:
    return part.isdigit()


def find_sites(model: nn.Module) -> list[AttentionSite]:
    """Every block's attention in forward order, labelled ``stage.index``.

    Stages are the model's ``feature_info`` entries; a single-resolution model (InLine-DeiT,
    whose feature_info lists every block) is one stage whose blocks are its entries.
    """
    types = attention_module_types()
    info = list(getattr(model, "feature_info", None) or [])
    prefixes = [f["module"] for f in info]
    single = len(info) > 1 and len({f["reduction"] for f in info}) == 1
    sites: dict[str, AttentionSite] = {}
    attn_names: list[str] = []
    for name, m in model.named_modules():
        if not isinstance(m, types) or any(name.startswith(p + ".") for p in attn_names):
            continue
        attn_names.append(name)
        stage, index, block = None, None, None
        for s, p in enumerate(prefixes):
            if name.startswith(p + "."):
                if single:
                    stage, index, block = 0, s, p
                else:
                    parts = name[len(p) + 1:].split(".")
                    j = next((i for i, part in enumerate(parts) if _int_part(part)), None)
                    if j is not None:
                        stage, index = s, int(parts[j])
                        block = ".".join([p, *parts[:j + 1]])
                break
        if stage is None:  # not under a feature_info module: number blocks in order
            block = name.rsplit(".", 1)[0] if "." in name else name
            stage = 0
            index = len({site.block_name for site in sites.values() if site.stage == 0})
            if block in sites:
                index = sites[block].index
        site = sites.setdefault(block, AttentionSite(f"{stage}.{index}", stage, index, block))
        site.modules.append((name, m))
    return list(sites.values())


def select_sites(sites: Sequence[AttentionSite], labels: Sequence[str] | None
                 ) -> list[AttentionSite]:
    """The sites named by ``labels`` ('stage.index', or 'all'); an unknown label lists the
    known ones."""
    if not labels or list(labels) == ["all"]:
        return list(sites)
    by_label = {s.label: s for s in sites}
    out = []
    for label in labels:
        if not re.fullmatch(r"\d+\.\d+", label) or label not in by_label:
            known = ", ".join(f"{s.label} ({s.module_types})" for s in sites)
            raise ValueError(f"no attention block {label!r}; this model has: {known}")
        out.append(by_label[label])
    return out


@dataclass
class Call:
    """One recorded call: positional and keyword inputs and the output."""

    args: tuple
    kwargs: dict
    output: Any

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)


@dataclass
class Captured:
    calls: dict[str, Call]                     # attention module name -> its call
    block_inputs: dict[str, tuple[int, ...]]   # block name -> shape of its first tensor input


def _detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(i) for i in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


@torch.no_grad()
def capture(model: nn.Module, sites: Sequence[AttentionSite], images: torch.Tensor
            ) -> Captured:
    """Run ``model.forward_features(images)`` once, recording every site module's inputs and
    output and the input shape of every site's block."""
    calls: dict[str, Call] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def on_call(name: str):
        def hook(module, args, kwargs, output):
            if name in calls:
                raise RuntimeError(f"{name} ran twice in one forward; cannot tell which to show")
            calls[name] = Call(_detach(args), _detach(kwargs), _detach(output))
        return hook

    def on_block(name: str):
        def hook(module, args, kwargs):
            t = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if t is not None:
                shapes[name] = tuple(t.shape)
        return hook

    modules = dict(model.named_modules())
    try:
        for site in sites:
            handles.append(modules[site.block_name].register_forward_pre_hook(
                on_block(site.block_name), with_kwargs=True))
            for name, m in site.modules:
                handles.append(m.register_forward_hook(on_call(name), with_kwargs=True))
        was_training = model.training
        model.eval()
        model.forward_features(images)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return Captured(calls, shapes)


# ---- per-module rebuilding --------------------------------------------------------------------

def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _linear64(layer: nn.Linear):
    """``layer`` applied in float64 (the maps are float64)."""
    w = layer.weight.detach().double()
    b = None if layer.bias is None else layer.bias.detach().double()
    return lambda x: F.linear(x.double(), w, b)


def _predicted_kernels(residual: nn.Module, mean_source: torch.Tensor, c: int) -> torch.Tensor:
    """InLine's per-sample, per-channel 3x3 kernels, predicted from the token mean."""
    return residual(mean_source.mean(dim=1).unsqueeze(-1)).view(mean_source.shape[0], c, 3, 3)


def _softmax_scale(m: nn.Module, head_dim: int) -> float:
    """The module's softmax scale (only softmax uses it), d**-0.5 unless it says otherwise."""
    return float(getattr(m, "scale", head_dim ** -0.5))


def _grid_hw(block_shape: tuple[int, ...] | None, n: int, c: int) -> tuple[int, int]:
    """(H, W) of a channels-last (B, H, W, C) block input, else the squarest factorisation."""
    if block_shape is not None and len(block_shape) == 4 and block_shape[-1] == c \
            and block_shape[1] * block_shape[2] == n:
        return block_shape[1], block_shape[2]
    h = math.isqrt(n)
    while n % h:
        h -= 1
    return h, n // h


def _global_attention(m: nn.Module, call: Call, label: str, max_tokens: int) -> SiteTensors:
    """GlobalAttention (InLine / plain linear / softmax; PVT's spatial-reduction softmax)."""
    x = call.arg(0, "x")
    hw = tuple(call.arg(1, "hw"))
    mean_source = call.arg(2, "mean_source")
    b, n, c = x.shape
    key_hw = hw
    if getattr(m, "split_kv", False):
        q = m.q(x)
        sr = getattr(m, "sr_ratio", 1)
        if sr > 1 and hasattr(m, "sr"):
            # PVT's softmax baseline: keys and values from the map reduced by sr_ratio (padded).
            grid = x.transpose(1, 2).reshape(b, c, *hw)
            grid = F.pad(grid, (0, (-hw[1]) % sr, 0, (-hw[0]) % sr))
            red = m.sr(grid)
            key_hw = tuple(red.shape[-2:])
            kv = m.kv(m.norm(red.flatten(2).transpose(1, 2)))
        else:
            kv = m.kv(x)
        k, v = kv.chunk(2, dim=-1)
    else:
        q, k, v = m.qkv(x).chunk(3, dim=-1)
    check_token_limit(label, q.shape[1], k.shape[1], max_tokens)
    injective = getattr(m, "injective", m.mode == "inline")
    own = {"softmax": "softmax", "linear": "linear"}.get(m.mode,
                                                         "inline" if injective else "linear")
    locals_ = []
    if m.mode == "inline" and getattr(m, "local", False):
        src = x if mean_source is None else mean_source
        locals_.append(LocalTerm(_predicted_kernels(m.residual, src, c).double(), hw,
                                 m.num_prefix_tokens, name="predicted 3x3 residual"))
    h = m.num_heads
    return SiteTensors(
        q=_heads(q, h).double(), k=_heads(k, h).double(), v=_heads(v, h).double(), own=own,
        scale=_softmax_scale(m, c // h), query_hw=hw, key_hw=key_hw,
        query_prefix=m.num_prefix_tokens, key_prefix=m.num_prefix_tokens if key_hw == hw else 0,
        phi=m.kernel if own == "inline" else "relu", locals=locals_,
        expected=call.output.double(), post=_linear64(m.proj),
        description=_describe(m, own, bool(locals_), key_hw != hw))


def _describe(m: nn.Module, own: str, local: bool, reduced: bool) -> str:
    extra = [own] + (["local residual"] if local else [])
    if reduced:
        extra.append(f"keys reduced by {m.sr_ratio}")
    return f"{type(m).__name__} ({', '.join(extra)})"


class _PartitionRecorder:
    """Stands in for a WindowAttention inside ``shifted_window_attention``: records the windows
    it is given (here: token ids) and the mask, and returns them unchanged."""

    def __init__(self, window_size: int):
        self.window_size = window_size
        self.windows: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.windows, self.mask = x, mask
        return x


def window_layout(h: int, w: int, window: int, mask: torch.Tensor | None
                  ) -> tuple[torch.Tensor, int]:
    """Where each window token of an (h, w) map comes from: (nW, window**2) token ids y*w + x,
    -1 for zero padding; and the shift. Found by sending token ids through the backbones' own
    partition (``shifted_window_attention``) with each possible shift and keeping the one whose
    mask is the one the module received."""
    from backbones.attention import shifted_window_attention

    ids = (torch.arange(h * w, dtype=torch.float64) + 1).view(1, h, w, 1)
    for shift in range(window):
        rec = _PartitionRecorder(window)
        shifted_window_attention(ids, rec, shift)
        if (mask is None) != (rec.mask is None):
            continue
        if mask is not None and (rec.mask.shape != mask.shape
                                 or not torch.equal(rec.mask.to(mask), mask)):
            continue
        return rec.windows[..., 0].round().long() - 1, shift
    raise RuntimeError(f"could not match the window partition of a {h}x{w} map (window "
                       f"{window}) to the mask the module received")


def _window_attention(m: nn.Module, call: Call, block_shape: tuple[int, ...] | None,
                      label: str, max_tokens: int) -> SiteTensors:
    """WindowAttention (Swin's window softmax with relative bias; L2ViT's LWA): the windows it
    receives are mapped back to image positions; padding tokens become extra keys."""
    xw = call.arg(0, "x")
    mask = call.arg(1, "mask")
    bw, n, c = xw.shape
    ws = m.window_size
    if block_shape is None or len(block_shape) != 4 or block_shape[-1] != c:
        raise RuntimeError(f"block {label}: cannot tell the map size around a window attention "
                           f"(block input {block_shape})")
    b, h, w = block_shape[:3]
    check_token_limit(label, h * w, h * w, max_tokens)
    slot_pos, shift = window_layout(h, w, ws, mask)                       # (nW, n)
    nw = slot_pos.shape[0]
    if bw != b * nw:
        raise RuntimeError(f"block {label}: {bw} windows for {b} images of {nw} windows")
    heads = m.num_heads
    qkv = m.qkv(xw).double().view(b, nw, n, 3, heads, c // heads).permute(3, 0, 4, 1, 2, 5)
    q, k, v = qkv[0], qkv[1], qkv[2]                                      # (B, H, nW, n, d)
    real = slot_pos >= 0
    n_real = h * w
    n_pad = int((~real).sum())
    key_of_slot = slot_pos.clone()
    key_of_slot[~real] = n_real + torch.arange(n_pad)
    win = torch.arange(nw)[:, None].expand(nw, n)
    slot = torch.arange(n)[None, :].expand(nw, n)
    flat_key, flat_win, flat_slot = key_of_slot.flatten(), win.flatten(), slot.flatten()
    order = torch.argsort(flat_key)                     # key id -> (window, slot)
    win_k, slot_k = flat_win[order], flat_slot[order]
    win_q, slot_q = win_k[:n_real], slot_k[:n_real]     # queries: the real tokens
    q_img = q[:, :, win_q, slot_q]                                        # (B, H, Nq, d)
    k_img, v_img = k[:, :, win_k, slot_k], v[:, :, win_k, slot_k]         # (B, H, Nk, d)
    allowed = (win_q[:, None] == win_k[None, :]).unsqueeze(0)             # (1, Nq, Nk)
    bias = torch.zeros(heads, n_real, n_real + n_pad, dtype=torch.float64)
    table = getattr(m, "relative_position_bias_table", None)
    if table is not None:
        rel = table.detach()[m.relative_position_index.view(-1)].view(n, n, -1)
        bias = bias + rel.double().permute(2, 0, 1)[:, slot_q[:, None], slot_k[None, :]]
    if mask is not None:
        bias = bias + mask.double()[win_q[:, None], slot_q[:, None], slot_k[None, :]]
    out = call.output.double().view(b, nw, n, -1)[:, win_q, slot_q]       # (B, Nq, C)
    return SiteTensors(
        q=q_img, k=k_img, v=v_img, own="softmax", scale=_softmax_scale(m, c // heads),
        query_hw=(h, w),
        key_hw=(h, w), allowed=allowed, bias=bias.unsqueeze(0), expected=out,
        post=_linear64(m.proj),
        description=f"WindowAttention (window {ws}, shift {shift}"
                    f"{', relative bias' if table is not None else ''})")


def _l2vit_attention(m: nn.Module, call: Call, block_shape: tuple[int, ...] | None,
                     label: str, max_tokens: int) -> SiteTensors:
    x = call.arg(0, "x")
    b, n, c = x.shape
    check_token_limit(label, n, n, max_tokens)
    hw = _grid_hw(block_shape, n, c)
    q, k, v = m.qkv(x).chunk(3, dim=-1)
    h = m.num_heads
    return SiteTensors(
        q=_heads(q, h).double(), k=_heads(k, h).double(), v=_heads(v, h).double(), own="l2vit",
        scale=_softmax_scale(m, c // h), query_hw=hw, key_hw=hw,
        temperature=m.temperature.detach().double().view(-1), clamp_min=float(m.clamp_min),
        expected=call.output.double(), post=_linear64(m.proj),
        description=f"L2ViTLinearAttention (clamp {m.clamp_min:g})")


def _lepe_local(conv: nn.Conv2d, b: int, hw: tuple[int, int], groups: torch.Tensor | None,
                ) -> tuple[LocalTerm, torch.Tensor | None]:
    """CSwin's LePE (``get_v``: depthwise 3x3 on V) as a local term and its bias."""
    c = conv.weight.shape[0]
    kernels = conv.weight.detach().double().view(1, c, 3, 3).expand(b, c, 3, 3)
    const = None
    if conv.bias is not None:
        const = conv.bias.detach().double().view(1, 1, c).expand(b, hw[0] * hw[1], c)
    return LocalTerm(kernels, hw, 0, groups, name="LePE (get_v)"), const


def _lepe_attention(m: nn.Module, call: Call, label: str, max_tokens: int) -> SiteTensors:
    """CSwin's cross-shaped softmax branch: softmax within stripes + LePE within stripes."""
    q, k, v = call.arg(0, "q"), call.arg(1, "k"), call.arg(2, "v")
    hw = tuple(call.arg(3, "hw"))
    b, n, c = q.shape
    check_token_limit(label, n, n, max_tokens)
    h, w = hw
    sh, sw = m.stripe()
    sh, sw = sh or h, sw or w
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    stripe = ((ys // sh) * math.ceil(w / sw) + xs // sw).flatten()           # (N,)
    local, const = _lepe_local(m.get_v, b, hw, stripe[None].expand(c, n))
    heads = m.num_heads
    name = {-1: "whole map", 0: f"vertical stripes of width {sw}",
            1: f"horizontal stripes of height {sh}"}[m.branch]
    return SiteTensors(
        q=_heads(q, heads).double(), k=_heads(k, heads).double(), v=_heads(v, heads).double(),
        own="softmax", scale=_softmax_scale(m, c // heads), query_hw=hw, key_hw=hw,
        allowed=(stripe[:, None] == stripe[None, :]).unsqueeze(0), locals=[local], const=const,
        expected=call.output.double(), description=f"LePEAttention ({name})")


def _inline_branch(m: nn.Module, call: Call, label: str, max_tokens: int) -> SiteTensors:
    """InLine-CSwin's global branch: InLine (or plain linear) + predicted residual + LePE."""
    q, k, v = call.arg(0, "q"), call.arg(1, "k"), call.arg(2, "v")
    hw = tuple(call.arg(3, "hw"))
    mean_source = call.arg(4, "mean_source")
    b, n, c = q.shape
    check_token_limit(label, n, n, max_tokens)
    locals_ = []
    if m.residual is not None:
        locals_.append(LocalTerm(_predicted_kernels(m.residual, mean_source, c).double(), hw,
                                 name="predicted 3x3 residual"))
    lepe, const = _lepe_local(m.get_v, b, hw, None)
    locals_.append(lepe)
    own = "inline" if m.injective else "linear"
    heads = m.num_heads
    return SiteTensors(
        q=_heads(q, heads).double(), k=_heads(k, heads).double(), v=_heads(v, heads).double(),
        own=own, scale=_softmax_scale(m, c // heads), query_hw=hw, key_hw=hw,
        phi="identity" if own == "inline" else "relu", locals=locals_, const=const,
        expected=call.output.double(),
        description=f"{type(m).__name__} ({own}{' + residual' if m.residual is not None else ''}"
                    " + LePE)")


def _concat_branches(parts: list[SiteTensors]) -> SiteTensors:
    """CSwin's two cross-shaped branches (channel halves) as one site with all heads."""
    first = parts[0]
    if any(p.own != first.own or p.query_hw != first.query_hw for p in parts):
        raise RuntimeError("branches of one block differ in kind or grid")
    allowed = torch.cat([p.allowed.expand(p.num_heads, -1, -1) for p in parts])
    kernels = torch.cat([p.locals[0].kernels for p in parts], dim=1)
    groups = torch.cat([p.locals[0].groups for p in parts])
    const = (torch.cat([p.const for p in parts], dim=-1)
             if all(p.const is not None for p in parts) else None)
    return SiteTensors(
        q=torch.cat([p.q for p in parts], 1), k=torch.cat([p.k for p in parts], 1),
        v=torch.cat([p.v for p in parts], 1), own=first.own, scale=first.scale,
        query_hw=first.query_hw, key_hw=first.key_hw, allowed=allowed,
        locals=[LocalTerm(kernels, first.query_hw, 0, groups, name=first.locals[0].name)],
        const=const, expected=torch.cat([p.expected for p in parts], dim=-1),
        description=" | ".join(p.description for p in parts))


@torch.no_grad()
def build_site_tensors(site: AttentionSite, captured: Captured,
                       max_tokens: int = 4096) -> SiteTensors:
    """Rebuild ``site``'s attention from what ``capture`` recorded (float64, image layout)."""
    from backbones import attention as A

    parts = []
    for name, m in site.modules:
        call = captured.calls.get(name)
        if call is None:
            raise RuntimeError(f"block {site.label}: {name} did not run in the forward")
        shape = captured.block_inputs.get(site.block_name)
        if isinstance(m, A.WindowAttention):
            parts.append(_window_attention(m, call, shape, site.label, max_tokens))
        elif isinstance(m, A.L2ViTLinearAttention):
            parts.append(_l2vit_attention(m, call, shape, site.label, max_tokens))
        elif isinstance(m, A.LePEAttention):
            parts.append(_lepe_attention(m, call, site.label, max_tokens))
        elif isinstance(m, A.GlobalAttention):
            parts.append(_global_attention(m, call, site.label, max_tokens))
        else:
            parts.append(_inline_branch(m, call, site.label, max_tokens))
    return parts[0] if len(parts) == 1 else _concat_branches(parts)
