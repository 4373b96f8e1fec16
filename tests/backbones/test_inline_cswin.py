"""InLine-CSwin against independent references: official parameter names, explicit N x N
attention formulas (the official InLine / CSwin order of operations) (the timm contract, any input
size and the official parameter counts: test_contract.py)."""


import pytest
import timm
import torch
import torch.nn.functional as F

import backbones  # noqa: F401  (registers the models with timm)
from backbones.inline_cswin import CSwinBlock, InLineCSwin, checkpoint_filter_fn

# Reduced model for the functional tests: every stage kind (InLine global, two-branch cross-shaped
# softmax, last-stage whole-map softmax) at tiny width.
SMALL = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 4), num_classes=10)




def _small(**kwargs) -> InLineCSwin:
    return timm.create_model("inline_cswin_tiny", **dict(SMALL, **kwargs))


def test_official_parameter_names_and_shapes():
    with torch.device("meta"):
        model = timm.create_model("inline_cswin_tiny")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "stage1_conv_embed.0.weight": (64, 3, 7, 7),
        "stage1_conv_embed.2.weight": (64,),
        "stage1.0.qkv.weight": (192, 64),
        "stage1.0.qkv.bias": (192,),
        "stage1.0.norm1.weight": (64,),
        "stage1.0.proj.weight": (64, 64),
        "stage1.0.attns.0.get_v.weight": (64, 1, 3, 3),
        "stage1.0.attns.0.residual.0.weight": (64, 32, 1),
        "stage1.0.attns.0.residual.2.weight": (576, 32, 1),
        "stage2.3.attns.0.residual.2.weight": (1152, 32, 1),
        "stage1.0.mlp.fc1.weight": (256, 64),
        "stage1.0.mlp.fc2.weight": (64, 256),
        "stage1.0.norm2.weight": (64,),
        "merge1.conv.weight": (128, 64, 3, 3),
        "merge1.norm.weight": (128,),
        "stage3.17.attns.0.get_v.weight": (128, 1, 3, 3),
        "stage3.17.attns.1.get_v.weight": (128, 1, 3, 3),
        "merge3.conv.weight": (512, 256, 3, 3),
        "stage4.0.attns.0.get_v.weight": (512, 1, 3, 3),
        "norm.weight": (512,),
        "head.weight": (1000, 512),
    }
    for k, shape in expected.items():
        assert shapes.get(k) == shape, k
    # Softmax stages have no InLine residual; InLine stages a single global branch.
    assert not any(".residual." in k for k in shapes if k.startswith(("stage3.", "stage4.")))
    assert not any(k.startswith("stage1.0.attns.1.") for k in shapes)
    assert "stage4.0.attns.1.get_v.weight" not in shapes


def test_intermediates_norm_last_map():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 122, 173)
    model = _small().eval()
    with torch.no_grad():
        ref_final = model.forward_features(x)
        plain = model.forward_intermediates(x, intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
        normed_all = model.forward_intermediates(x, norm=True, intermediates_only=True)
    torch.testing.assert_close(normed[0], ref_final)
    torch.testing.assert_close(normed_all[0], plain[0])  # only the last map is normed


def test_prune_intermediate_layers():
    model = _small().eval()
    kept = model.prune_intermediate_layers((0, 1))
    assert kept == [0, 1]
    assert not any(k.startswith(("stage3.", "stage4.", "merge2.", "merge3.", "head."))
                   for k in model.state_dict())
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 65, 97), indices=(0, 1),
                                           intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 32, 17, 25), (1, 64, 9, 13)]


def test_state_dict_round_trip_other_resolution():
    torch.manual_seed(0)
    # Source trained "at 384" and, separately, with another stripe width: neither changes the
    # parameter layout; checkpoint wrapped like the official release, with DDP prefixes.
    src = _small(img_size=384).eval()
    ckpt = {"model": {"module." + k: v for k, v in src.state_dict().items()}, "epoch": 3}
    dst = _small(img_size=224).eval()
    dst.load_state_dict(checkpoint_filter_fn(ckpt, dst), strict=True)
    x = torch.randn(1, 3, 70, 45)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))

    other_split = _small(split_size=(1, 2, 12, 12))
    sd = checkpoint_filter_fn({"state_dict": other_split.state_dict()}, dst)
    dst.load_state_dict(sd, strict=True)

    # A headless model drops the classifier weights; another channel count adapts the stem.
    headless = _small(num_classes=0, in_chans=1)
    headless.load_state_dict(checkpoint_filter_fn(ckpt, headless), strict=True)


def _block_input(dim: int, hw: tuple[int, int], batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, hw[0] * hw[1], dim) + 0.5  # non-zero mean: the residual uses it


def _official_inline_reference(block: CSwinBlock, x: torch.Tensor, hw: tuple[int, int],
                               local: bool) -> torch.Tensor:
    """Official InLine-CSwin branch with an explicit N x N weight matrix."""
    b, n, c = x.shape
    branch = block.attns[0]
    heads, d = branch.num_heads, c // branch.num_heads
    s = d ** -0.5
    q, k, v = block.qkv(block.norm1(x)).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-2, -1)                                    # (B, h, N, N)
    weights = (s / n) * (logits - logits.mean(dim=-1, keepdim=True)) + 1.0 / n
    torch.testing.assert_close(weights.sum(-1), torch.ones(b, heads, n))
    out = (weights @ v).transpose(1, 2).reshape(b, n, c)
    v_map = v.transpose(1, 2).reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2)
    if local:
        # Kernels from the mean of the block input (before norm1), grouped conv as in the paper.
        ker = branch.residual(x.mean(dim=1).unsqueeze(-1)).reshape(b * c, 1, 3, 3)
        res = F.conv2d(v_map.reshape(1, b * c, *hw), ker, padding=1, groups=b * c)
        out = out + res.reshape(b, c, n).transpose(1, 2)
    lepe = F.conv2d(v_map, branch.get_v.weight, branch.get_v.bias, padding=1, groups=c)
    out = out + lepe.flatten(2).transpose(1, 2)
    return block.proj(out)


@pytest.mark.parametrize("local", [True, False])
def test_inline_block_matches_explicit_formula(local):
    torch.manual_seed(0)
    hw = (5, 7)
    block = CSwinBlock(64, 2, attn_type="inline", inline_local=local).eval()
    assert (block.attns[0].residual is not None) == local
    x = _block_input(64, hw)
    with torch.no_grad():
        torch.testing.assert_close(block.attend(x, hw),
                                   _official_inline_reference(block, x, hw, local),
                                   rtol=1e-4, atol=1e-5)


def test_plain_linear_block_matches_explicit_formula():
    torch.manual_seed(0)
    hw, c, heads = (4, 6), 64, 2
    block = CSwinBlock(c, heads, attn_type="linear").eval()
    assert block.attns[0].residual is None
    x = _block_input(c, hw, batch=1)
    b, n = x.shape[:2]
    with torch.no_grad():
        q, k, v = block.qkv(block.norm1(x)).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        a = F.relu(q) @ F.relu(k).transpose(-2, -1)
        out = ((a / a.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(b, n, c)
        v_map = v.transpose(1, 2).reshape(b, *hw, c).permute(0, 3, 1, 2)
        lepe = F.conv2d(v_map, block.attns[0].get_v.weight, block.attns[0].get_v.bias,
                        padding=1, groups=c)
        ref = block.proj(out + lepe.flatten(2).transpose(1, 2))
        torch.testing.assert_close(block.attend(x, hw), ref, rtol=1e-4, atol=1e-5)


def test_cross_shaped_softmax_block_matches_explicit_formula():
    """Channel half 0: vertical stripes, half 1: horizontal stripes, LePE within each stripe."""
    torch.manual_seed(0)
    hw, c, heads, split = (4, 6), 32, 2, 2
    block = CSwinBlock(c, heads, attn_type="softmax", split_size=split).eval()
    x = _block_input(c, hw, batch=1)
    b, n = x.shape[:2]
    rows = torch.arange(hw[0]).repeat_interleave(hw[1])
    cols = torch.arange(hw[1]).repeat(hw[0])
    with torch.no_grad():
        q, k, v = block.qkv(block.norm1(x)).chunk(3, dim=-1)
        halves = []
        for j, same in enumerate((cols[:, None] // split == cols[None, :] // split,
                                  rows[:, None] // split == rows[None, :] // split)):
            sl = slice(j * c // 2, (j + 1) * c // 2)
            qj, kj, vj = q[..., sl], k[..., sl], v[..., sl]          # one head per branch
            logits = (qj @ kj.transpose(-2, -1)) * (c // 2) ** -0.5
            attn = logits.masked_fill(~same, float("-inf")).softmax(-1)
            out = attn @ vj
            # LePE: depthwise 3x3 on V of each stripe, zero padding at the stripe borders.
            v_map = vj.transpose(1, 2).reshape(b, c // 2, *hw)
            conv = block.attns[j].get_v
            lepe = torch.zeros_like(v_map)
            for s0 in range(0, hw[1 - j], split):
                idx = (slice(None), slice(None)) + ((slice(None), slice(s0, s0 + split)) if j == 0
                                                    else (slice(s0, s0 + split), slice(None)))
                lepe[idx] = conv(v_map[idx])
            halves.append(out + lepe.flatten(2).transpose(1, 2))
        ref = block.proj(torch.cat(halves, dim=-1))
        torch.testing.assert_close(block.attend(x, hw), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(attn_types="SSSS"), dict(attn_types="LLLL"),
                                    dict(inline_injective=False), dict(inline_local=False),
                                    dict(attn_types=["I", "I", "S", "I"])])
def test_counterparts_and_ablations_build_and_run(kwargs):
    model = _small(**kwargs).eval()
    has_residual = any(".residual." in k for k in model.state_dict())
    inline = "I" in "".join(kwargs.get("attn_types", "IISS"))
    assert has_residual == (inline and kwargs.get("inline_local", True))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 45))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_softmax_counterpart_param_count(n_params):
    # Plain CSwin-T ('SSSS') = InLine-CSwin-T minus the residual predictors of stages 1-2.
    with torch.device("meta"):
        inline = timm.create_model("inline_cswin_tiny")
        soft = timm.create_model("inline_cswin_tiny", attn_types="SSSS")
    residual = sum(p.numel() for k, p in inline.named_parameters() if ".residual." in k)
    assert n_params(soft) == n_params(inline) - residual


def test_timm_api_helpers():
    model = _small()
    assert model.no_weight_decay() == set()
    model.reset_classifier(0, global_pool="")
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 256, 2, 2)  # unpooled: NCHW
    model.reset_classifier(10, global_pool="")  # per-position logits, NCHW
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 10, 2, 2)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown attention letter"):
        _small(attn_types="IIXS")
    with pytest.raises(ValueError, match="depths"):
        _small(depths=(1, 1, 1))
    with pytest.raises(ValueError, match="divisible"):
        _small(num_heads=(3, 2, 2, 4))
    with pytest.raises(ValueError, match="even"):
        _small(num_heads=(1, 2, 2, 4), attn_types="SSSS")
    with pytest.raises(ValueError, match="even"):
        _small(num_heads=(1, 2, 1, 4), embed_dim=32)
