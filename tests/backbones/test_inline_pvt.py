"""InLine-PVT against independent references: official parameter names, explicit attention
formulas, torch's own interpolation (the timm contract, map sizes and the official parameter
counts: test_contract.py)."""


import pytest
import timm
import torch
import torch.nn.functional as F

from backbones import inline_pvt as P

torch.manual_seed(0)

TINY = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
            num_classes=10)


def tiny(**kw):
    return timm.create_model("inline_pvt_tiny", **{**TINY, **kw})


def test_official_names_and_shapes():
    with torch.device("meta"):
        m = timm.create_model("inline_pvt_tiny")
    sd = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    dims, mlp, grids = (64, 128, 320, 512), (8, 8, 4, 4), (56, 28, 14, 7)
    expected = {"head.weight": (1000, 512), "head.bias": (1000,)}
    for s in range(4):
        c, cin, p = dims[s], (3, 64, 128, 320)[s], (4, 2, 2, 2)[s]
        hid, g = c * mlp[s], grids[s]
        expected.update({f"pos_embed{s + 1}": (1, g * g, c),
                         f"patch_embed{s + 1}.proj.weight": (c, cin, p, p),
                         f"patch_embed{s + 1}.proj.bias": (c,),
                         f"patch_embed{s + 1}.norm.weight": (c,),
                         f"patch_embed{s + 1}.norm.bias": (c,)})
        for i in range(2):
            b = f"block{s + 1}.{i}."
            expected.update({
                b + "norm1.weight": (c,), b + "norm1.bias": (c,),
                b + "attn.q.weight": (c, c), b + "attn.q.bias": (c,),
                b + "attn.kv.weight": (2 * c, c), b + "attn.kv.bias": (2 * c,),
                b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,),
                b + "attn.residual.0.weight": (c, 32, 1), b + "attn.residual.0.bias": (c,),
                b + "attn.residual.2.weight": (9 * c, 32, 1), b + "attn.residual.2.bias": (9 * c,),
                b + "norm2.weight": (c,), b + "norm2.bias": (c,),
                b + "mlp.fc1.weight": (hid, c), b + "mlp.fc1.bias": (hid,),
                b + "mlp.fc2.weight": (c, hid), b + "mlp.fc2.bias": (c,)})
    assert sd == expected  # no cls token, no final norm
    assert m.block1[0].norm1.eps == 1e-6 and m.patch_embed1.norm.eps == 1e-5


def test_features_only_prunes_unused_stages():
    x = torch.randn(1, 3, 90, 70)
    f2 = timm.create_model("inline_pvt_tiny", features_only=True, out_indices=(0, 1), **TINY)
    assert not hasattr(f2.model, "block3") and len(f2(x)) == 2
    # The model has no final norm: norm=True changes nothing.
    m = tiny().eval()
    with torch.no_grad():
        plain = m.forward_intermediates(x, intermediates_only=True)
        normed = m.forward_intermediates(x, norm=True, intermediates_only=True)
    for a, b in zip(plain, normed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _wrapped(sd):
    return {"model": {"module." + k: v for k, v in sd.items()}, "max_accuracy": 0.0}


def test_state_dict_round_trip_other_resolution():
    src = tiny(img_size=256).eval()
    dst = tiny(img_size=224).eval()
    dst.load_state_dict(P.checkpoint_filter_fn(_wrapped(src.state_dict()), dst), strict=True)
    for k, v in src.state_dict().items():
        if not k.startswith("pos_embed"):
            torch.testing.assert_close(dst.state_dict()[k], v)
    for s, (old, new) in enumerate(zip((64, 32, 16, 8), (56, 28, 14, 7), strict=True)):
        pe = getattr(src, f"pos_embed{s + 1}")
        grid = pe.reshape(1, old, old, -1).permute(0, 3, 1, 2)
        ref = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True,
                            align_corners=False).flatten(2).transpose(1, 2)
        torch.testing.assert_close(getattr(dst, f"pos_embed{s + 1}"), ref)
    same = tiny(img_size=256).eval()
    same.load_state_dict(P.checkpoint_filter_fn(_wrapped(src.state_dict()), same), strict=True)
    x = torch.randn(1, 3, 64, 80)
    torch.testing.assert_close(same(x), src(x))


def test_runtime_pos_embed_follows_real_grid():
    m = tiny(img_size=64).eval()  # stage-1 grid 16x16
    pe = m._pos_embed_for(0, (8, 32))  # same token count, other grid: must be resampled
    grid = m.pos_embed1.reshape(1, 16, 16, 16).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(8, 32), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(pe, ref.flatten(2).transpose(1, 2))


def test_inline_attention_matches_explicit_formula():
    """Injective weights over all tokens, plus the predicted 3x3 residual (official conv)."""
    attn = tiny().block2[0].attn
    b, (h, w), c, heads = 2, (3, 5), 32, 2
    x = torch.randn(b, h * w, c)
    n, d = x.shape[1], c // heads
    q = attn.q(x).view(b, n, heads, d).transpose(1, 2)
    k, v = (t.view(b, n, heads, d).transpose(1, 2) for t in attn.kv(x).chunk(2, dim=-1))
    dots = q @ k.transpose(-2, -1)
    wts = (d ** -0.5 / n) * (dots - dots.mean(dim=-1, keepdim=True)) + 1.0 / n
    y = (wts @ v).transpose(1, 2).reshape(b, n, c)
    kern = attn.residual(x.mean(dim=1).unsqueeze(-1)).reshape(b * c, 1, 3, 3)
    vg = v.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2).reshape(1, b * c, h, w)
    y = y + F.conv2d(vg, kern, padding=1, groups=b * c).reshape(b, c, n).transpose(1, 2)
    torch.testing.assert_close(attn(x, (h, w)), attn.proj(y), rtol=1e-4, atol=1e-5)


def test_softmax_counterpart_spatial_reduction():
    """'SSSS' is PVT: softmax with keys/values from an sr x sr strided conv + LayerNorm."""
    with torch.device("meta"):
        pvt = timm.create_model("inline_pvt_tiny", attn_types="SSSS")
    names = pvt.state_dict()
    assert names["block1.0.attn.sr.weight"].shape == (64, 64, 8, 8)
    assert "block1.0.attn.norm.weight" in names and "block4.0.attn.sr.weight" not in names
    assert not any("residual" in k for k in names)
    m = tiny(attn_types="SSSS").eval()
    attn = m.block1[0].attn
    h, w, c = 6, 10, 16  # not multiples of sr = 8: the map is zero-padded to 8 x 16
    x = torch.randn(1, h * w, c)
    grid = F.pad(x.transpose(1, 2).reshape(1, c, h, w), (0, 6, 0, 2))
    red = attn.norm(attn.sr(grid).flatten(2).transpose(1, 2))
    k, v = attn.kv(red).chunk(2, dim=-1)
    ref = torch.softmax(attn.q(x) @ k.transpose(-2, -1) * c ** -0.5, -1) @ v
    torch.testing.assert_close(attn(x, (h, w)), attn.proj(ref), rtol=1e-4, atol=1e-5)
    out = m(torch.randn(1, 3, 75, 53))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    mixed = tiny(attn_types=["I", "L", "S", "S"])
    assert [mixed.block2[0].attn.mode, mixed.block4[0].attn.mode] == ["linear", "softmax"]
    injective_only = tiny(inline_local=False)
    assert not any("residual" in k for k in injective_only.state_dict())
    local_only = tiny(inline_injective=False)
    assert local_only.block1[0].attn.kernel == "relu"
    x = torch.randn(1, 3, 40, 56)
    for model in (mixed, injective_only, local_only):
        assert torch.isfinite(model(x)).all()


def test_api_and_errors():
    m = tiny()
    assert m.no_weight_decay() == {"pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4"}
    for coarse in (True, False):
        groups = timm.models.group_parameters(m, m.group_matcher(coarse=coarse))
        assert len(groups) == 6  # stem, 4 stages (one block each), head
    with pytest.raises(ValueError, match="stages"):
        tiny(attn_types="III")
    with pytest.raises(ValueError, match="embed_dims"):
        tiny(embed_dims=(16, 32, 48))
    with pytest.raises(ValueError, match="not a square"):
        P.checkpoint_filter_fn({"pos_embed1": torch.zeros(1, 12, 16)}, tiny())
