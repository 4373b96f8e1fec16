"""The explicit attention maps are the modules' attention: maps x V (+ local terms) must give
the output each module really produced in a forward pass (captured by a hook), for every family
and attention type."""

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from torch import nn

from analysis.maps import LocalTerm, attention_weights, counterpart_kinds, site_output
from analysis.sites import build_site_tensors, capture, find_sites

# Module types that must be covered by the tiny models below (all the backbones offer).
EXPECTED_TYPES = {"GlobalAttention", "SpatialReductionAttention", "WindowAttention",
                  "L2ViTLinearAttention", "LePEAttention", "InLineBranch"}


def _all_sites(model, x):
    sites = find_sites(model)
    captured = capture(model, sites, x)
    return [(s, build_site_tensors(s, captured)) for s in sites]


@pytest.mark.parametrize("key", sorted(TINY))
def test_maps_times_v_reproduce_module_output(tiny, key):
    model, x = tiny(key)
    results = _all_sites(model, x)
    assert results, "no attention found"
    for site, t in results:
        # Explicit N x N weights (queries x keys), not a factorised form.
        w = attention_weights(t, t.own)
        assert w.shape == (x.shape[0], t.num_heads, t.n_queries, t.n_keys)
        got = site_output(t)
        want = t.expected
        assert got.shape == want.shape
        scale = want.abs().max()
        assert scale > 0
        assert (got - want).abs().max() <= 1e-5 * scale, (key, site.label, t.description)


def test_every_attention_type_is_covered(tiny):
    seen = set()
    for key in TINY:
        model, _ = tiny(key, batch=1)
        for site in find_sites(model):
            seen.update(type(m).__name__ for _, m in site.modules)
    assert EXPECTED_TYPES <= seen


def test_maps_without_the_local_terms_miss_the_output(tiny):
    """The local residual is a real part of InLine's output: dropping it breaks the match (so the
    match above is not the residual being negligible)."""
    model, x = tiny("pvt_inline")
    site, t = _all_sites(model, x)[0]
    assert t.locals and t.locals[0].name.startswith("predicted")
    full = (site_output(t) - t.expected).abs().max()
    t.locals = []
    partial = (site_output(t) - t.expected).abs().max()
    assert partial > 100 * full


@pytest.mark.parametrize("key", ["pvt_inline", "deit_inline", "cswin_ISSS"])
def test_weight_rows(tiny, key):
    """InLine rows sum to exactly 1 (and are not uniform); softmax and linear rows are
    distributions; the counterparts are computed from the same q and k."""
    model, x = tiny(key)
    _, t = _all_sites(model, x)[0]
    assert t.own == "inline" and counterpart_kinds(t) == ["inline", "linear", "softmax"]
    inline = attention_weights(t, "inline")
    assert torch.allclose(inline.sum(-1), torch.ones_like(inline[..., 0]), atol=1e-12)
    assert (inline - inline.mean(-1, keepdim=True)).abs().max() > 1e-6
    for kind in ("linear", "softmax"):
        w = attention_weights(t, kind)
        assert (w >= 0).all()
        assert torch.allclose(w.sum(-1), torch.ones_like(w[..., 0]), atol=1e-5)


def test_window_maps_against_the_backbone_window_op():
    """Independent of the window bookkeeping: image-layout maps x V must equal the backbones'
    own shifted-window attention on the image-level map (padding and shift included)."""
    from backbones.attention import WindowAttention, shifted_window_attention

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = WindowAttention(16, window_size=4, num_heads=2)
            nn.init.normal_(self.attn.relative_position_bias_table, std=1.0)

        def forward(self, x):
            return shifted_window_attention(x, self.attn, shift=2)

    class Net(nn.Module):
        feature_info = [dict(module="blocks", reduction=1, num_chs=16)]

        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block()])

        def forward_features(self, x):
            return self.blocks[0](x)

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 10, 13, 16)                      # pads to 12 x 16, shifted by 2
    sites = find_sites(net)
    t = build_site_tensors(sites[0], capture(net, sites, x))
    with torch.no_grad():
        want = net.forward_features(x).reshape(2, 10 * 13, 16).double()
    assert torch.allclose(site_output(t), want, atol=1e-6)
    # Every query attends only within its own (shifted) window: at most 16 keys.
    w = attention_weights(t, "softmax")
    assert ((w > 1e-12).sum(-1) <= 16).all()


def test_local_term_against_grouped_convolution():
    """The explicit per-channel 3x3 weights equal the official grouped convolution
    (groups = B*C, zero padding), and within stripes the convolution of each stripe alone."""
    torch.manual_seed(0)
    b, c, h, w = 2, 3, 5, 6
    kernels = torch.randn(b, c, 3, 3, dtype=torch.float64)
    v = torch.randn(b, c, h, w, dtype=torch.float64)
    term = LocalTerm(kernels, (h, w))
    lw = term.weights(torch.arange(h * w), h * w)                      # (B, C, N, N)
    got = torch.einsum("bcnk,bck->bcn", lw, v.flatten(2)).view(b, c, h, w)
    want = F.conv2d(v.reshape(1, b * c, h, w), kernels.reshape(b * c, 1, 3, 3), padding=1,
                    groups=b * c).view(b, c, h, w)
    assert torch.allclose(got, want, atol=1e-12)
    # Vertical stripes of width 2: no neighbour across a stripe border.
    stripe = (torch.arange(w) // 2).repeat(h)
    term = LocalTerm(kernels, (h, w), groups=stripe[None].expand(c, -1))
    lw = term.weights(torch.arange(h * w), h * w)
    got = torch.einsum("bcnk,bck->bcn", lw, v.flatten(2)).view(b, c, h, w)
    for s in range(3):
        cols = slice(2 * s, 2 * s + 2)
        part = F.conv2d(v[..., cols].reshape(1, b * c, h, 2), kernels.reshape(b * c, 1, 3, 3),
                        padding=1, groups=b * c).view(b, c, h, 2)
        assert torch.allclose(got[..., cols], part, atol=1e-12)


def test_prefix_token_gets_no_local_term(tiny):
    """DeiT's cls token takes part in the attention but not in the 3x3 residual."""
    model, x = tiny("deit_inline")
    _, t = _all_sites(model, x)[0]
    assert t.query_prefix == 1 and t.key_prefix == 1
    lw = t.locals[0].weights(torch.arange(t.n_queries), t.n_keys)
    assert (lw[:, :, 0] == 0).all() and (lw[:, :, :, 0] == 0).all()
    assert (lw[:, :, 1:, 1:] != 0).any()
