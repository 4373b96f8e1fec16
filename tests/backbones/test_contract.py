"""The contract every registered variant keeps (timm's model API, any input size, checkpoints),
checked the same way for all 16. Family-specific behaviour is tested in the family files.

The variants are built small (each family's widths and depths below, everything else the
variant's own: builder, defaults, attention spec) except where the size is the point: the
parameter counts are the official ones of the full-size variants.
"""

import math

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules, group_parameters

from backbones import inline_cswin, inline_deit, inline_pvt, inline_swin, l2vit, load_checkpoint

VARIANTS = sorted(timm.list_models("inline_*") + timm.list_models("l2vit_*"))

# Official counts (REFERENCE.md, counted from the official code at each model's img_size).
OFFICIAL_PARAMS_M = {
    "inline_deit_tiny": 6.48, "inline_deit_small": 16.73, "inline_deit_base": 23.80,
    "inline_pvt_tiny": 12.03, "inline_pvt_small": 21.56, "inline_pvt_medium": 37.62,
    "inline_pvt_large": 51.15,
    "inline_swin_tiny": 29.22, "inline_swin_small": 49.79, "inline_swin_base": 88.35,
    "inline_cswin_tiny": 20.60, "inline_cswin_small": 33.03, "inline_cswin_base": 73.41,
    "l2vit_tiny": 28.60, "l2vit_small": 50.20, "l2vit_base": 88.58,
}


def _nchw(strides):
    return lambda b, c, h, w: (b, c, math.ceil(h / strides), math.ceil(w / strides))


# Per family: module, small size, default feature channels and strides, forward_features layout,
# the first block (for counting its forward calls).
FAMILIES = {
    "inline_deit": dict(
        module=inline_deit, small=dict(embed_dim=32, num_heads=2, depth=12),
        channels=[32] * 4, reductions=[16] * 4, out_indices=(3, 5, 7, 11),
        # tokens, cls first
        features=lambda b, c, h, w: (b, 1 + math.ceil(h / 16) * math.ceil(w / 16), c),
        first_block="blocks.0"),
    "inline_pvt": dict(
        module=inline_pvt,
        small=dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1)),
        channels=[16, 32, 48, 64], reductions=[4, 8, 16, 32], out_indices=(0, 1, 2, 3),
        features=_nchw(32), first_block="block1.0"),
    "inline_swin": dict(
        # The S stages have a shifted (odd-index) block.
        module=inline_swin,
        small=dict(embed_dim=32, depths=(1, 1, 2, 2), num_heads=(2, 4, 8, 16)),
        channels=[32, 64, 128, 256], reductions=[4, 8, 16, 32], out_indices=(0, 1, 2, 3),
        features=lambda b, c, h, w: (b, math.ceil(h / 32), math.ceil(w / 32), c),  # NHWC
        first_block="layers.0.blocks.0"),
    "inline_cswin": dict(
        # Every stage kind: InLine global, cross-shaped softmax, last-stage whole-map softmax.
        module=inline_cswin,
        small=dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 4)),
        channels=[32, 64, 128, 256], reductions=[4, 8, 16, 32], out_indices=(0, 1, 2, 3),
        features=_nchw(32), first_block="stage1.0"),
    "l2vit": dict(
        # Every stage keeps one LWA and one LGA block.
        module=l2vit,
        small=dict(dims=(32, 64, 96, 128), depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4)),
        channels=[32, 64, 96, 128], reductions=[4, 8, 16, 32], out_indices=(0, 1, 2, 3),
        features=_nchw(32), first_block="stages.0.0"),
}
H, W = 99, 134  # non-square, not a multiple of any patch, window or stride


def family(name: str) -> dict:
    return FAMILIES[name.rsplit("_", 1)[0]]


def small(name: str, **kw) -> torch.nn.Module:
    return timm.create_model(name, **{**family(name)["small"], "num_classes": 10, **kw})


variants = pytest.mark.parametrize("name", VARIANTS)


def test_all_variants_are_covered():
    assert len(VARIANTS) == 16 and set(VARIANTS) == set(OFFICIAL_PARAMS_M)


@variants
def test_param_count_matches_official(name, meta_params_m):
    assert meta_params_m(name) == OFFICIAL_PARAMS_M[name]


@variants
def test_forward_shapes_and_backward_any_size(name):
    torch.manual_seed(0)
    m = small(name, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, H, W)
    feats = m.forward_features(x)
    assert feats.shape == family(name)["features"](2, m.num_features, H, W)
    out = m.forward_head(feats)
    assert out.shape == (2, 10)
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)
    # DeiT's logits see only the cls token, which the last block's local residual never touches:
    # every token goes into the loss so that every parameter gets a gradient.
    (out.square().sum() + feats.square().mean()).backward()
    for n, p in m.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


@variants
def test_any_size_down_to_one_pixel_and_a_clear_error_below(name):
    m = small(name).eval()
    with torch.no_grad():
        for hw in ((1, 1), (2, 5)):
            out = m(torch.randn(1, 3, *hw))
            assert out.shape == (1, 10) and torch.isfinite(out).all()
        with pytest.raises(AssertionError, match="H, W >= 1"):
            m(torch.randn(1, 3, 0, 8))


@variants
def test_features_only_and_intermediates(name):
    torch.manual_seed(0)
    fam = family(name)
    m = small(name).eval()
    f = timm.create_model(name, features_only=True, **fam["small"]).eval()
    assert f.feature_info.reduction() == fam["reductions"]
    assert f.feature_info.channels() == fam["channels"]
    # The feature model is the classifier without its norm and head, same parameter names.
    missing, unexpected = f.model.load_state_dict(m.state_dict(), strict=False)
    assert not missing and all(k.startswith(("norm.", "head.")) for k in unexpected)
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        maps = f(x)
        inter = m.forward_intermediates(x, indices=fam["out_indices"], intermediates_only=True)
        final, _ = m.forward_intermediates(x, indices=fam["out_indices"])
        ref = m.forward_features(x)
        _, last_two = m.forward_intermediates(x, indices=2)  # an int: the last n
        _, all_maps = m.forward_intermediates(x)
        _, early = m.forward_intermediates(x, indices=(1,), stop_early=True)
    for y, c, r in zip(maps, fam["channels"], fam["reductions"], strict=True):
        assert y.shape == (1, c, math.ceil(H / r), math.ceil(W / r))
    for a, b, c in zip(maps, inter, [all_maps[i] for i in fam["out_indices"]], strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    torch.testing.assert_close(final, ref)
    assert len(last_two) == 2
    for a, b in zip(last_two, all_maps[-2:], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(early[0], all_maps[1])
    # Pruning keeps the earlier maps.
    assert m.prune_intermediate_layers((0, 1)) == [0, 1]
    with torch.no_grad():
        pruned = m.forward_intermediates(x, indices=(0, 1), intermediates_only=True)
    for a, b in zip(pruned, all_maps[:2], strict=True):
        torch.testing.assert_close(a, b)


@variants
def test_checkpoint_round_trip(name, tmp_path):
    """Official-style wrappers (``model`` / ``state_dict`` / ``model_ema``, DDP ``module.``
    prefixes) load strictly through the family's filter, through ``load_checkpoint`` and through
    timm's pretrained path, and give the source model's outputs."""
    torch.manual_seed(0)
    filter_fn = family(name)["module"].checkpoint_filter_fn
    src = small(name, num_classes=1000).eval()
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        ref = src(x)
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    for wrapper in ("model", "state_dict", "model_ema"):
        dst = small(name, num_classes=1000).eval()
        with torch.no_grad():
            assert not torch.allclose(dst(x), ref)  # another init: the load below must bite
        dst.load_state_dict(filter_fn({wrapper: sd, "epoch": 3}, dst), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(dst(x), ref, rtol=0, atol=0)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    dst = small(name, num_classes=1000).eval()
    load_checkpoint(dst, path, filter_fn=filter_fn)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               **{**family(name)["small"], "num_classes": 1000}).eval()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), ref, rtol=0, atol=0)


@variants
def test_grad_checkpointing_same_output_and_gradients(name):
    torch.manual_seed(0)
    m = small(name).eval()
    calls = []
    # A pre-hook: the recomputation in backward stops once it has what it needs, before the
    # block returns (a forward hook would not see it).
    m.get_submodule(family(name)["first_block"]).register_forward_pre_hook(
        lambda *_: calls.append(1))

    def run():
        m.zero_grad()
        x = torch.randn(1, 3, 48, 80, generator=torch.Generator().manual_seed(1),
                        requires_grad=True)
        out = m(x)
        out.sum().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        return out.detach(), x.grad, grads

    ref = run()
    assert len(calls) == 1
    assert ref[2].keys() == dict(m.named_parameters()).keys()  # every parameter has a gradient
    assert torch.isfinite(ref[1]).all()
    m.set_grad_checkpointing(True)
    out = run()
    assert len(calls) == 3  # the block ran again in backward: its activations were not kept
    torch.testing.assert_close(out, ref)
    with torch.no_grad():  # nothing to recompute without gradients
        m(torch.randn(1, 3, 48, 80))
    assert len(calls) == 4


@variants
def test_bf16_autocast_large_input_finite(name):
    m = small(name).eval()
    x = torch.randn(1, 3, 64, 96) * 100
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        maps = m.forward_intermediates(x, intermediates_only=True)
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(y.float()).all() for y in maps)


@variants
def test_classifier_api_and_bad_arguments(name):
    m = small(name)
    assert m.get_classifier() is m.head
    x = torch.randn(1, 3, 40, 56)
    m.reset_classifier(5)
    assert m.get_classifier().out_features == 5 and m(x).shape == (1, 5)
    m.reset_classifier(0)
    assert isinstance(m.get_classifier(), torch.nn.Identity)
    assert m(x).shape == (1, m.num_features)  # pooled features
    # No pooling: the features as forward_features lays them out; logits at every position.
    m.eval().reset_classifier(0, "")
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.forward_features(x))
        m.reset_classifier(5, "")
        assert m(x).shape == family(name)["features"](1, 5, *x.shape[-2:])
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(0, "max")
    with pytest.raises(ValueError, match="global_pool"):
        small(name, global_pool="max")
    with pytest.raises(ValueError, match="drop_path_rate"):
        small(name, drop_path_rate=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        small(name, num_classes=-1)
    with pytest.raises(TypeError, match="no_such_arg"):
        small(name, no_such_arg=1)


@variants
def test_no_weight_decay_and_group_matcher(name):
    m = small(name)
    names = [n for n, _ in m.named_parameters()]
    assert m.no_weight_decay() <= set(names)
    first_conv = m.pretrained_cfg["first_conv"] + ".weight"
    for coarse in (False, True):
        groups = list(group_parameters(m, m.group_matcher(coarse=coarse)).values())
        # Every parameter in exactly one group; the stem first, the head last.
        assert sorted(n for g in groups for n in g) == sorted(names)
        assert first_conv in groups[0] and "head.weight" in groups[-1]
        assert len(groups) >= 3


def _fx_traced(m: torch.nn.Module) -> torch.fx.GraphModule:
    """``m`` symbolically traced in its current mode as timm's model tests trace it: with timm's
    no-trace modules as leaves and its no-trace functions wrapped."""
    leaves = tuple(get_notrace_modules())

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, mod: torch.nn.Module, qualname: str) -> bool:
            return isinstance(mod, leaves) or super().is_leaf_module(mod, qualname)

    tracer = Tracer(autowrap_functions=tuple(get_notrace_functions()), param_shapes_constant=True)
    return torch.fx.GraphModule(m, tracer.trace(m))


@variants
def test_fx_trace_forward_and_backward(name):
    """timm's FX contract: no Python branch on a traced size stops the trace, and the traced
    graph is the model. Eval: the same output to the bit, at a size that needs patch, window and
    stripe padding and at a square one. Train: every parameter gets a gradient."""
    torch.manual_seed(0)
    m = small(name).eval()
    traced = _fx_traced(m)
    for hw in ((H, W), (64, 64)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), m(x), rtol=0, atol=0)
    m = small(name, drop_path_rate=0.1).train()
    traced = _fx_traced(m)
    out = traced(torch.randn(2, 3, H, W))
    assert out.shape == (2, 10)
    out.mean().backward()
    for n, p in traced.named_parameters():
        assert p.grad is not None, n
    assert sum(p.numel() for p in traced.parameters()) == sum(p.numel() for p in m.parameters())
