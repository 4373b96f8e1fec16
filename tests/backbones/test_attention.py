"""Attention kernels against explicit N x N formulas (weights materialised, then times V)."""

import math

import pytest
import torch
import torch.nn.functional as F

from backbones import attention as A

torch.manual_seed(0)


def heads(t, h):
    b, n, c = t.shape
    return t.view(b, n, h, c // h).transpose(1, 2)


def merge(t):
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def inline_weights(q, k):
    """(s/N)(q_i.k_j - q_i.mean_t k_t) + 1/N, written out in full."""
    n, s = k.shape[-2], q.shape[-1] ** -0.5
    dots = q @ k.transpose(-2, -1)
    return (s / n) * (dots - dots.mean(dim=-1, keepdim=True)) + 1.0 / n


def row_sum_weights(q, k, eps=0.0):
    a = q @ k.transpose(-2, -1)
    return a / (a.sum(dim=-1, keepdim=True) + eps)


def official_residual(v_grid, kernels):
    """The official form: one grouped conv with groups = B*C."""
    b, c, h, w = v_grid.shape
    out = F.conv2d(v_grid.reshape(1, b * c, h, w), kernels.reshape(b * c, 1, 3, 3), padding=1,
                   groups=b * c)
    return out.view(b, c, h, w)


@pytest.mark.parametrize("hw", [(5, 7), (3, 11)])
def test_inline_module_matches_explicit_formula(hw):
    """GlobalAttention('inline'): explicit weights + the official grouped-conv residual, odd grids,
    one prefix (cls) token counted in N and the mean but not in the convolution."""
    dim, nh, b = 24, 3, 2
    n = hw[0] * hw[1] + 1
    attn = A.GlobalAttention(dim, nh, mode="inline", num_prefix_tokens=1).eval()
    x = torch.randn(b, n, dim)
    q, k, v = (heads(t, nh) for t in attn.qkv(x).chunk(3, dim=-1))
    w = inline_weights(q, k)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5, rtol=0)
    out = merge(w @ v)
    kernels = attn.residual(x.mean(1).unsqueeze(-1)).view(b, dim, 3, 3)
    v_grid = merge(v)[:, 1:].transpose(1, 2).reshape(b, dim, *hw)
    res = official_residual(v_grid, kernels).flatten(2).transpose(1, 2)
    out[:, 1:] += res
    ref = attn.proj(out)
    torch.testing.assert_close(attn(x, hw), ref, atol=1e-5, rtol=1e-4)


def test_predicted_residual_equals_grouped_conv():
    v, kern = torch.randn(3, 16, 9, 13), torch.randn(3, 16, 3, 3)
    torch.testing.assert_close(A.predicted_local_residual(v, kern), official_residual(v, kern),
                               atol=1e-5, rtol=0)


def test_plain_linear_matches_explicit():
    q, k, v = torch.rand(2, 3, 35, 8), torch.rand(2, 3, 35, 8), torch.randn(2, 3, 35, 8)
    ref = row_sum_weights(q, k) @ v
    out = A.plain_linear_attention(q, k, v, eps=0.0)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_ablation_modes_match_explicit():
    """Injective-only (no residual) and local-only (row-sum + residual) are configurations."""
    dim, nh, hw = 16, 2, (3, 5)
    x = torch.randn(2, 15, dim)
    inj = A.GlobalAttention(dim, nh, mode="inline", local=False)
    assert not hasattr(inj, "residual")
    q, k, v = (heads(t, nh) for t in inj.qkv(x).chunk(3, dim=-1))
    torch.testing.assert_close(inj(x, hw), inj.proj(merge(inline_weights(q, k) @ v)),
                               atol=1e-5, rtol=1e-4)
    loc = A.GlobalAttention(dim, nh, mode="inline", injective=False)
    q, k, v = (heads(t, nh) for t in loc.qkv(x).chunk(3, dim=-1))
    out = merge(row_sum_weights(F.relu(q), F.relu(k), eps=1e-6) @ v)
    kernels = loc.residual(x.mean(1).unsqueeze(-1)).view(2, dim, 3, 3)
    out = out + official_residual(merge(v).transpose(1, 2).reshape(2, dim, *hw), kernels
                                  ).flatten(2).transpose(1, 2)
    torch.testing.assert_close(loc(x, hw), loc.proj(out), atol=1e-5, rtol=1e-4)


def test_injectivity():
    """Plain linear attention maps q and 2q to the same distribution; InLine does not."""
    q, k = F.relu(torch.randn(1, 1, 10, 8)), F.relu(torch.randn(1, 1, 10, 8))
    torch.testing.assert_close(row_sum_weights(q, k), row_sum_weights(2 * q, k))
    # ... and the kernel itself gives the same output for both (it is that formula).
    v = torch.randn(1, 1, 10, 8)
    torch.testing.assert_close(A.plain_linear_attention(q, k, v),
                               A.plain_linear_attention(2 * q, k, v))
    w1, w2 = inline_weights(q, k), inline_weights(2 * q, k)
    assert (w1 - w2).abs().max() > 1e-3
    s = 8 ** -0.5
    o1, o2 = A.injective_linear_attention(q, k, v, s), A.injective_linear_attention(2 * q, k, v, s)
    assert (o1 - o2).abs().max() > 1e-3
    torch.testing.assert_close(o2, w2 @ v, atol=1e-5, rtol=1e-4)


def test_l2vit_linear_matches_explicit():
    q, k, v = torch.randn(3, 2, 4, 21, 8).unbind(0)
    temp = torch.rand(4, 1, 1) + 0.1
    for scale, clamp in ((1.0, 100.0), (30.0, 100.0), (1.0, 0.5)):  # clamp active and not
        qs, ks = q * scale, k * scale
        a = F.relu(qs) @ F.relu(ks).transpose(-2, -1)              # unnormalised weights
        ref = (a * temp) @ v / a.sum(-1, keepdim=True).clamp(min=clamp)
        torch.testing.assert_close(A.l2vit_linear_attention(qs, ks, v, temp, clamp), ref,
                                   atol=1e-4, rtol=1e-4)


def test_softmax_module_matches_explicit():
    attn = A.GlobalAttention(16, 2, mode="softmax")
    x = torch.randn(2, 21, 16)
    q, k, v = (heads(t, 2) for t in attn.qkv(x).chunk(3, dim=-1))
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(attn(x, (3, 7)), attn.proj(merge(w @ v)), atol=1e-5, rtol=1e-4)


def window_reference(x, attn, shift):
    """Swin on a padded map as one N x N masked softmax: token i sees j iff same window after the
    roll and same pre-roll region (the -100 mask, taken as -inf)."""
    b, h, w, c = x.shape
    ws, nh = attn.window_size, attn.num_heads
    hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
    xp = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    xr = torch.roll(xp, (-shift, -shift), (1, 2)) if shift else xp
    ys, xs = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
    win = (ys // ws) * (wp // ws) + xs // ws

    def region(coord, size):
        if not shift:
            return torch.zeros_like(coord)
        return (coord >= size - ws).long() + (coord >= size - shift).long()

    reg = region(ys, hp) * 3 + region(xs, wp)
    win, reg = win.flatten(), reg.flatten()
    same = (win[:, None] == win[None]) & (reg[:, None] == reg[None])
    tokens = xr.reshape(b, hp * wp, c)
    q, k, v = (heads(t, nh) for t in attn.qkv(tokens).chunk(3, dim=-1))
    logits = q @ k.transpose(-2, -1) * attn.scale
    if attn.relative_position_bias_table is not None:
        # Relative offset of (i, j) inside their window, Swin's table layout.
        ly, lx = (ys % ws).flatten(), (xs % ws).flatten()
        idx = (ly[:, None] - ly[None] + ws - 1) * (2 * ws - 1) + (lx[:, None] - lx[None] + ws - 1)
        idx = idx.clamp(0, (2 * ws - 1) ** 2 - 1)
        logits = logits + attn.relative_position_bias_table[idx].permute(2, 0, 1)
    logits = logits.masked_fill(~same, float("-inf"))
    out = attn.proj(merge(torch.softmax(logits, -1) @ v)).view(b, hp, wp, c)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    return out[:, :h, :w]


@pytest.mark.parametrize("shift,rel_pos", [(0, True), (3, True), (0, False)])
def test_window_attention_matches_explicit(shift, rel_pos):
    attn = A.WindowAttention(12, window_size=7, num_heads=3, rel_pos=rel_pos)
    x = torch.randn(2, 10, 17, 12)
    torch.testing.assert_close(A.shifted_window_attention(x, attn, shift),
                               window_reference(x, attn, shift), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hw", [(7, 20), (20, 5), (3, 3)])
def test_window_attention_does_not_shift_a_map_that_fits_one_window(hw):
    """Swin's rule: a map with min(H, W) <= window is not shifted, even by a shifted block."""
    attn = A.WindowAttention(12, window_size=7, num_heads=3)
    x = torch.randn(2, *hw, 12)
    torch.testing.assert_close(A.shifted_window_attention(x, attn, 3),
                               window_reference(x, attn, 0), atol=1e-5, rtol=1e-4)


def test_roll_as_slices_equals_torch_roll():
    x = torch.randn(2, 7, 9, 3)
    for sh, sw in ((0, 0), (3, 3), (6, 2), (7, 9)):
        torch.testing.assert_close(A._roll_hw(x, sh, sw), torch.roll(x, (-sh, -sw), (1, 2)),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("branch", [0, 1, -1])
def test_lepe_attention_matches_explicit(branch):
    """Cross-shaped stripes on an odd grid: softmax over the real tokens of each stripe, plus the
    depthwise 3x3 LePE of V computed inside the stripe."""
    c, nh, split, (h, w) = 8, 2, 2, (5, 7)
    attn = A.LePEAttention(c, nh, split_size=split, branch=branch)
    q, k, v = torch.randn(3, 1, h * w, c).unbind(0)
    out = attn(q, k, v, (h, w))
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    stripe_id = {0: xs // split, 1: ys // split, -1: torch.zeros_like(xs)}[branch]
    same = stripe_id[:, None] == stripe_id[None]
    logits = (heads(q, nh) @ heads(k, nh).transpose(-2, -1)) * attn.scale
    ref = merge(torch.softmax(logits.masked_fill(~same, float("-inf")), -1) @ heads(v, nh))
    # LePE: 3x3 depthwise conv where neighbours outside the stripe count as zero.
    wgt, bias = attn.get_v.weight[:, 0], attn.get_v.bias
    vg = v[0].view(h, w, c)
    lepe = torch.zeros(h * w, c)
    for i in range(h * w):
        y, x = ys[i].item(), xs[i].item()
        acc = bias.clone()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and same[i, yy * w + xx]:
                    acc = acc + wgt[:, dy + 1, dx + 1] * vg[yy, xx]
        lepe[i] = acc
    torch.testing.assert_close(out[0], ref[0] + lepe, atol=1e-5, rtol=1e-4)


def test_linear_kernels_finite_where_fp16_state_overflows():
    """Inputs whose attention output fits in fp16 but whose linear-attention state does not:
    the official form (fp16 K'^T V') overflows; the kernels reduce in fp32 and stay finite."""
    n, d = 4096, 32
    s = d ** -0.5
    q = torch.randn(1, 2, n, d) * 1e-3
    k, v = (700 + 10 * torch.randn(2, 1, 2, n, d)).unbind(0)
    f = (s / n) ** 0.5
    official_state = (k.half() * f).transpose(-2, -1) @ (v.half() * f)
    assert not torch.isfinite(official_state).all()
    ref = A.injective_linear_attention(q, k, v, s)
    out = A.injective_linear_attention(q.half(), k.half(), v.half(), s)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=2e-3, atol=1.0)

    # Row-sum forms: numerator and denominator overflow, their ratio does not.
    q, k, v = (30 * torch.rand(3, 1, 2, n, d)).unbind(0)
    assert not torch.isfinite(k.half().transpose(-2, -1) @ v.half()).all()
    for out, ref in (
        (A.plain_linear_attention(q.half(), k.half(), v.half()), A.plain_linear_attention(q, k, v)),
        (A.l2vit_linear_attention(q.half(), k.half(), v.half(), torch.full((2, 1, 1), s)),
         A.l2vit_linear_attention(q, k, v, torch.full((2, 1, 1), s))),
    ):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref, rtol=2e-3, atol=0.05)


def test_inline_under_autocast_is_finite():
    attn = A.GlobalAttention(64, 2, mode="inline")
    x = torch.randn(2, 30 * 30, 64) * 100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, (30, 30))
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_parse_attention_types():
    assert A.parse_attention_types("IIS", [1, 2, 1]) == [["inline"], ["inline"] * 2, ["softmax"]]
    assert A.parse_attention_types(["I", "IS"], [2, 2]) == [["inline"] * 2, ["inline", "softmax"]]
    with pytest.raises(ValueError, match="stages"):
        A.parse_attention_types("II", [1, 1, 1])
    with pytest.raises(ValueError, match="unknown attention letter"):
        A.parse_attention_types("IX", [1, 1])
    with pytest.raises(ValueError, match="blocks"):
        A.parse_attention_types(["I", "IS"], [2, 3])
    # The official mixed spelling: 'M' stage = n InLine blocks, then softmax.
    assert A.parse_attention_types("IMS3", [1, 5, 1]) == [
        ["inline"], ["inline"] * 3 + ["softmax"] * 2, ["softmax"]]
    with pytest.raises(ValueError, match="'M' stage needs"):
        A.parse_attention_types("IMS", [1, 5, 1])
    with pytest.raises(ValueError, match="unknown attention mode"):
        A.GlobalAttention(8, 2, mode="cosine")
    with pytest.raises(ValueError, match="unknown kernel"):
        A.GlobalAttention(8, 2, kernel="tanh")


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("prefix", [0, 1])
def test_inline_op_matches_explicit_formula(grad, prefix):
    """The fused InLine op (in-place per-head path without autograd, out-of-place with it) on
    strided q/k/v views of one qkv tensor equals explicit weights + the official grouped conv,
    gradients included."""
    b, nh, dim, hw = 2, 3, 24, (4, 6)
    n = hw[0] * hw[1] + prefix
    qkv0, kernels0 = torch.randn(b, n, 3 * dim), torch.randn(b, dim, 3, 3)

    def run(fused):
        qkv, kernels = qkv0.clone().requires_grad_(grad), kernels0.clone().requires_grad_(grad)
        q, k, v = qkv.chunk(3, dim=-1)
        with torch.set_grad_enabled(grad):
            if fused:
                out = A.inline_attention(q, k, v, nh, kernels, hw, prefix)
            else:
                qh, kh, vh = (heads(t, nh) for t in (q, k, v))
                out = merge(inline_weights(qh, kh) @ vh)
                v_grid = v[:, prefix:].transpose(1, 2).reshape(b, dim, *hw)
                res = official_residual(v_grid, kernels).flatten(2).transpose(1, 2)
                out = torch.cat([out[:, :prefix], out[:, prefix:] + res], dim=1)
            if grad:
                out.square().sum().backward()
        return out.detach(), qkv.grad, kernels.grad

    for got, ref in zip(run(True), run(False), strict=True):
        if ref is None:
            assert got is None
        else:
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
