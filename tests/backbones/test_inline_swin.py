"""InLine-Swin against independent references: official parameter names, timm's own Swin block
and patch merging (same parameter names, fixed-size maps), explicit N x N attention (the timm
contract and the official parameter counts: test_contract.py)."""

import math

import pytest
import timm
import torch
from timm.models.swin_transformer import PatchMerging as TimmPatchMerging
from timm.models.swin_transformer import SwinTransformerBlock as TimmSwinBlock

from backbones import inline_swin as S

torch.manual_seed(0)



# Tiny layout for fast tests: head dim 16, the S stage has a shifted (odd-index) block.
SMALL = dict(embed_dim=32, depths=(1, 1, 2, 2), num_heads=(2, 4, 8, 16), num_classes=10)
H, W = 250, 333  # not multiples of 32 (nor of 4 or 7)


def small(name="inline_swin_tiny", **kw):
    return timm.create_model(name, pretrained=False, **dict(SMALL, **kw))


def test_official_names_and_shapes():
    with torch.device("meta"):
        sd = timm.create_model("inline_swin_tiny").state_dict()
        sd_b = timm.create_model("inline_swin_base").state_dict()
    expect = {
        "patch_embed.proj.weight": (96, 3, 4, 4), "patch_embed.norm.weight": (96,),
        "layers.0.blocks.0.norm1.weight": (96,), "layers.0.blocks.0.attn.qkv.weight": (288, 96),
        "layers.0.blocks.0.attn.qkv.bias": (288,), "layers.0.blocks.0.attn.proj.weight": (96, 96),
        "layers.0.blocks.0.attn.residual.0.weight": (96, 32, 1),
        "layers.0.blocks.0.attn.residual.2.weight": (864, 32, 1),
        "layers.0.blocks.1.mlp.fc1.weight": (384, 96),
        "layers.0.blocks.1.mlp.fc2.weight": (96, 384),
        "layers.0.downsample.norm.weight": (384,),
        "layers.0.downsample.reduction.weight": (192, 384),
        "layers.2.downsample.reduction.weight": (768, 1536),
        "layers.3.blocks.1.attn.relative_position_bias_table": (169, 24),
        "layers.3.blocks.0.attn.relative_position_index": (49, 49),
        "norm.weight": (768,), "head.weight": (1000, 768),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layers.3.downsample.reduction.weight" not in sd
    assert "layers.0.downsample.reduction.bias" not in sd  # bias-free, as officially
    assert not any("attn_mask" in k for k in sd)
    # Base, stage 3: blocks 0-1 InLine, blocks 2-17 softmax windows ('IIMS2').
    assert "layers.2.blocks.1.attn.residual.2.weight" in sd_b
    assert tuple(sd_b["layers.2.blocks.2.attn.relative_position_bias_table"].shape) == (169, 16)
    assert "layers.2.blocks.2.attn.residual.0.weight" not in sd_b
    assert "layers.2.blocks.1.attn.relative_position_bias_table" not in sd_b


def test_mixed_stage_forward_backward():
    m = small(attn_types="IIMS1")  # stage 3: 1 InLine then 1 softmax
    assert [b.attn_type for b in m.layers[2].blocks] == ["inline", "softmax"]
    x = torch.randn(1, 3, H, W)
    feats = m.forward_features(x)
    assert feats.shape == (1, math.ceil(H / 32), math.ceil(W / 32), 256)
    out = m.forward_head(feats)
    assert out.shape == (1, 10)
    out.square().mean().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n


def test_intermediates_norm_last_map_and_pruning():
    m = small().eval()
    x = torch.randn(1, 3, 122, 155)  # odd maps from stride 8 on
    with torch.no_grad():
        inter = m.forward_intermediates(x, intermediates_only=True)
        _, inter_n = m.forward_intermediates(x, norm=True)
        ref = m.forward_features(x)
    torch.testing.assert_close(inter_n[-1], ref.permute(0, 3, 1, 2))
    torch.testing.assert_close(inter_n[0], inter[0])  # only the last map is normed
    kept = m.prune_intermediate_layers((0, 1))
    assert kept == [0, 1] and len(m.layers) == 2 and m.layers[1].downsample is None


def test_checkpoint_roundtrip_other_resolution_and_window():
    src = small(img_size=224, window_size=7, ape=True).eval()
    sd = src.state_dict()
    sd["layers.2.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)  # official buffer
    ckpt = {"model": {"module." + k: v for k, v in sd.items()}}
    dst = small(img_size=160, window_size=5, ape=True)
    dst.load_state_dict(S.checkpoint_filter_fn(ckpt, dst), strict=True)
    assert dst.absolute_pos_embed.shape == (1, 40 * 40, 32)
    assert dst.layers[3].blocks[1].attn.relative_position_bias_table.shape == (81, 16)
    # Same configuration: identical outputs.
    same = small(img_size=224, window_size=7, ape=True).eval()
    same.load_state_dict(S.checkpoint_filter_fn(ckpt, same), strict=True)
    x = torch.randn(1, 3, 60, 90)
    with torch.no_grad():
        torch.testing.assert_close(same(x), src(x))
        assert torch.isfinite(dst.eval()(x)).all()


def test_s_block_matches_timm_swin_block():
    """Shifted window block == timm's SwinTransformerBlock (same names) on a 14 x 14 map."""
    torch.manual_seed(1)
    ours = S.InLineSwinBlock(32, 2, attn_type="softmax", window_size=7, shift=True).eval()
    ref = TimmSwinBlock(32, (14, 14), num_heads=2, window_size=7, shift_size=3).eval()
    # timm keeps the index and mask as non-persistent buffers: load every parameter strictly.
    sd = {k: v for k, v in ours.state_dict().items() if not k.endswith("relative_position_index")}
    ref.load_state_dict(sd, strict=True)
    x = torch.randn(2, 14, 14, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_patch_merging_matches_timm():
    ours = S.PatchMerging(16)
    ref = TimmPatchMerging(16)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 10, 16)
    torch.testing.assert_close(ours(x), ref(x))
    assert ours(torch.randn(1, 7, 9, 16)).shape == (1, 4, 5, 32)


def test_inline_block_injective_only_matches_explicit_formula():
    m = small(inline_local=False).eval()
    blk = m.layers[0].blocks[0]
    assert not hasattr(blk.attn, "residual")
    x = torch.randn(2, 5, 7, 32)
    t = blk.norm1(x).reshape(2, 35, 32)
    q, k, v = (u.view(2, 35, 2, 16).transpose(1, 2) for u in blk.attn.qkv(t).chunk(3, -1))
    s, n = 16 ** -0.5, 35
    dots = q @ k.transpose(-2, -1)
    w = (s / n) * (dots - dots.mean(-1, keepdim=True)) + 1.0 / n
    out = blk.attn.proj((w @ v).transpose(1, 2).reshape(2, 35, 32))
    with torch.no_grad():
        torch.testing.assert_close(blk._attention(blk.norm1(x)).reshape(2, 35, 32), out,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("spec", ["SSSS", "LLLL"])
def test_counterparts_build_and_run(spec):
    m = small(attn_types=spec).eval()
    assert not any("residual" in k for k in m.state_dict())
    with torch.no_grad():
        assert m(torch.randn(1, 3, 61, 90)).shape == (1, 10)


@pytest.mark.parametrize("kw", [dict(kernel="relu"), dict(kernel="leakyrelu"),
                                dict(kernel="exp"), dict(inline_injective=False)])
def test_kernel_and_ablation_options(kw):
    m = small(**kw).eval()
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, 3, 64, 64))).all()


def test_api_and_errors():
    m = small()
    assert "layers.3.blocks.1.attn.relative_position_bias_table" in m.no_weight_decay()
    assert "absolute_pos_embed" in small(ape=True).no_weight_decay()
    with pytest.raises(ValueError, match="kernel"):
        small(kernel="tanh")
    with pytest.raises(ValueError, match="stages"):
        small(attn_types="IIS")
    with pytest.raises(ValueError, match="M"):
        small(attn_types="IIMS")
    with pytest.raises(ValueError, match="divisible"):
        small(num_heads=(3, 4, 8, 16))


def test_global_softmax_counterpart_sees_whole_map():
    """global_softmax=True: S blocks are softmax over the whole stage map. A token outside every
    7 x 7 window of the first token changes its output only then (window blocks cannot see it),
    and the block equals explicit softmax attention over all tokens."""
    torch.manual_seed(2)
    glob = S.InLineSwinBlock(32, 2, attn_type="softmax", global_softmax=True).eval()
    win = S.InLineSwinBlock(32, 2, attn_type="softmax").eval()
    assert "relative_position_bias_table" not in dict(glob.named_parameters()).keys()
    x = torch.randn(1, 14, 14, 32)
    far = x.clone()
    far[0, 13, 13] += torch.randn(32)
    with torch.no_grad():
        assert not torch.allclose(glob(x)[0, 0, 0], glob(far)[0, 0, 0])
        torch.testing.assert_close(win(x)[0, 0, 0], win(far)[0, 0, 0])
        t = glob.norm1(x).reshape(1, 196, 32)
        q, k, v = (u.view(1, 196, 2, 16).transpose(1, 2) for u in glob.attn.qkv(t).chunk(3, -1))
        w = torch.softmax(q @ k.transpose(-2, -1) * 16 ** -0.5, dim=-1)
        ref = glob.attn.proj((w @ v).transpose(1, 2).reshape(1, 196, 32))
        torch.testing.assert_close(glob._attention(glob.norm1(x)).reshape(1, 196, 32), ref,
                                   atol=1e-5, rtol=1e-4)
    m = small(attn_types="SSSS", global_softmax=True).eval()
    assert not any("relative_position" in k or "residual" in k for k in m.state_dict())
    with torch.no_grad():
        assert m(torch.randn(1, 3, 61, 90)).shape == (1, 10)
