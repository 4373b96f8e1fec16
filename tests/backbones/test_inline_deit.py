"""InLine-DeiT against independent references: official parameter names, explicit attention
formulas, explicit token -> map layout, torch's own interpolation (the timm contract and the
official parameter counts: test_contract.py)."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from backbones import inline_deit as D

torch.manual_seed(0)

TINY = dict(embed_dim=64, num_heads=2, depth=2, num_classes=10)


def tiny(**kw):
    return timm.create_model("inline_deit_tiny", **{**TINY, **kw})


def test_official_names_and_shapes():
    with torch.device("meta"):
        m = timm.create_model("inline_deit_tiny")
    sd = m.state_dict()
    expected = {"cls_token": (1, 1, 192), "pos_embed": (1, 197, 192),
                "patch_embed.proj.weight": (192, 3, 16, 16), "norm.weight": (192,),
                "head.weight": (1000, 192)}
    per_block = {"norm1.weight": (192,), "norm1.bias": (192,),
                 "attn.qkv.weight": (576, 192), "attn.qkv.bias": (576,),
                 "attn.proj.weight": (192, 192), "attn.proj.bias": (192,),
                 "attn.residual.0.weight": (192, 32, 1), "attn.residual.0.bias": (192,),
                 "attn.residual.2.weight": (1728, 32, 1), "attn.residual.2.bias": (1728,),
                 "norm2.weight": (192,), "norm2.bias": (192,),
                 "mlp.fc1.weight": (768, 192), "mlp.fc1.bias": (768,),
                 "mlp.fc2.weight": (192, 768), "mlp.fc2.bias": (192,)}
    for i in range(12):
        expected.update({f"blocks.{i}.{k}": v for k, v in per_block.items()})
    expected.update({"patch_embed.proj.bias": (192,), "norm.bias": (192,), "head.bias": (1000,)})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert m.blocks[0].norm1.eps == 1e-6 and m.norm.eps == 1e-6


def test_features_are_block_outputs_without_cls_token():
    kw = dict(embed_dim=32, num_heads=1, depth=12)
    f = timm.create_model("inline_deit_tiny", features_only=True, **kw)
    m = timm.create_model("inline_deit_tiny", **kw).eval()
    f.model.load_state_dict(m.state_dict(), strict=False)  # f has no norm/head
    f.eval()
    x = torch.randn(1, 3, 70, 100)
    gh, gw = math.ceil(70 / 16), math.ceil(100 / 16)
    maps = f(x)
    # Reference layout: the block outputs captured by hooks, cls dropped, tokens row-major.
    captured = {}
    for i in (3, 5, 7, 11):
        m.blocks[i].register_forward_hook(lambda mod, a, o, i=i: captured.__setitem__(i, o))
    m(x)
    for y, i in zip(maps, (3, 5, 7, 11), strict=True):
        assert y.shape == (1, 32, gh, gw)
        ref = captured[i][:, 1:].reshape(1, gh, gw, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(y, ref)
    # norm=True normalises every map (the final norm fits each block's output), NLC on request.
    _, normed = m.forward_intermediates(x, indices=(3,), norm=True, output_fmt="NLC")
    torch.testing.assert_close(normed[0], m.norm(captured[3])[:, 1:])


def _wrapped(sd):
    return {"model": {"module." + k: v for k, v in sd.items()}, "epoch": 3}


def test_state_dict_round_trip_other_resolution():
    src = tiny(img_size=288).eval()
    dst = tiny(img_size=224).eval()
    sd = D.checkpoint_filter_fn(_wrapped(src.state_dict()), dst)
    dst.load_state_dict(sd, strict=True)
    # Everything but the position embedding is copied; its grid is resampled 18x18 -> 14x14.
    for k, v in src.state_dict().items():
        if k != "pos_embed":
            torch.testing.assert_close(dst.state_dict()[k], v)
    old = src.pos_embed
    assert dst.pos_embed.shape == (1, 1 + 14 * 14, 64)
    torch.testing.assert_close(dst.pos_embed[:, :1], old[:, :1])
    grid = old[:, 1:].reshape(1, 18, 18, 64).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(14, 14), mode="bicubic", antialias=True,
                        align_corners=False)
    torch.testing.assert_close(dst.pos_embed[:, 1:], ref.flatten(2).transpose(1, 2))
    # Same resolution: identical outputs.
    same = tiny(img_size=288).eval()
    same.load_state_dict(D.checkpoint_filter_fn(_wrapped(src.state_dict()), same), strict=True)
    x = torch.randn(1, 3, 64, 80)
    torch.testing.assert_close(same(x), src(x))


def test_runtime_pos_embed_follows_real_grid():
    m = tiny(img_size=64).eval()  # built grid 4x4
    # A 2x8 grid has as many tokens as the built 4x4 one: it must still be resampled.
    pe = m._pos_embed_for((2, 8))
    grid = m.pos_embed[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(2, 8), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(pe[:, 1:], ref.flatten(2).transpose(1, 2))
    assert m(torch.randn(1, 3, 32, 128)).shape == (1, 10)


def test_inline_attention_matches_explicit_formula():
    """Injective weights (s/N)(q.k_j - mean_t q.k_t) + 1/N over cls + patches, plus the
    predicted 3x3 residual on the patch tokens only (the official grouped-conv form)."""
    m = tiny().eval()
    attn = m.blocks[0].attn
    b, (h, w), c, heads = 2, (3, 5), 64, 2
    x = torch.randn(b, 1 + h * w, c)
    n, d = x.shape[1], c // heads
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    q, k, v = (t.view(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
    dots = q @ k.transpose(-2, -1)
    wts = (d ** -0.5 / n) * (dots - dots.mean(dim=-1, keepdim=True)) + 1.0 / n
    torch.testing.assert_close(wts.sum(-1), torch.ones(b, heads, n))
    y = (wts @ v).transpose(1, 2).reshape(b, n, c)
    kern = attn.residual(x.mean(dim=1).unsqueeze(-1)).reshape(b * c, 1, 3, 3)
    vg = v.transpose(1, 2).reshape(b, n, c)[:, 1:].reshape(b, h, w, c).permute(0, 3, 1, 2)
    res = F.conv2d(vg.reshape(1, b * c, h, w), kern, padding=1, groups=b * c)
    y = y.clone()
    y[:, 1:] += res.reshape(b, c, h * w).transpose(1, 2)
    torch.testing.assert_close(attn(x, (h, w)), attn.proj(y), rtol=1e-4, atol=1e-5)


def test_softmax_counterpart_and_ablations():
    s = tiny(attn_types="S").eval()
    assert not any("residual" in k for k in s.state_dict())
    assert s.blocks[0].attn.mode == "softmax"
    mixed = tiny(attn_types="IS")
    assert [b.attn.mode for b in mixed.blocks] == ["inline", "softmax"]
    x = torch.randn(1, 3, 40, 56)
    assert torch.isfinite(s(x)).all() and torch.isfinite(mixed(x)).all()
    # Softmax DeiT: the cls token attends like any token, explicit formula.
    attn = s.blocks[0].attn
    t = torch.randn(1, 1 + 3 * 4, 64)
    q, k, v = (u.view(1, 13, 2, 32).transpose(1, 2) for u in attn.qkv(t).chunk(3, dim=-1))
    ref = torch.softmax(q @ k.transpose(-2, -1) * 32 ** -0.5, -1) @ v
    torch.testing.assert_close(attn(t, (3, 4)), attn.proj(ref.transpose(1, 2).reshape(1, 13, 64)),
                               rtol=1e-4, atol=1e-5)
    local_only = tiny(inline_injective=False)
    assert local_only.blocks[0].attn.kernel == "relu" and hasattr(local_only.blocks[0].attn,
                                                                 "residual")
    injective_only = tiny(inline_local=False)
    assert not any("residual" in k for k in injective_only.state_dict())
    assert torch.isfinite(local_only(x)).all() and torch.isfinite(injective_only(x)).all()


def test_api_and_errors():
    m = tiny()
    assert m.no_weight_decay() == {"pos_embed", "cls_token"}
    m.reset_classifier(0, "avg")
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    groups = timm.models.group_parameters(m, m.group_matcher())
    assert len(groups) == 2 + 1  # stem, 2 blocks (norm joins the last)
    take = m.prune_intermediate_layers(indices=(0,))
    assert take == [0] and len(m.blocks) == 1
    with pytest.raises(ValueError, match="attention letter"):
        tiny(attn_types="X")
    with pytest.raises(ValueError, match="not a square"):
        D.checkpoint_filter_fn({"pos_embed": torch.zeros(1, 1 + 12, 64)}, tiny())
