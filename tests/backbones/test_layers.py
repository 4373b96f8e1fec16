"""The building blocks the families share, against explicit torch: the patch embedding, the
argument checks, the block runner, the InLine residual predictor and global linear attention."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbones import _helpers
from backbones import attention as A
from backbones.layers import PatchEmbed


@pytest.mark.parametrize("norm", [False, True])
def test_patch_embed_pads_projects_and_norms(norm):
    torch.manual_seed(0)
    pe = PatchEmbed(4, 3, 8, norm=norm)
    x = torch.randn(2, 3, 10, 13)
    ref = F.conv2d(F.pad(x, (0, 3, 0, 2)), pe.proj.weight, pe.proj.bias, stride=4)  # 12 x 16
    ref = ref.permute(0, 2, 3, 1)
    if norm:
        ref = F.layer_norm(ref, (8,), pe.norm.weight, pe.norm.bias)
    out = pe(x)
    assert out.shape == (2, 3, 4, 8)
    torch.testing.assert_close(out, ref)
    # flatten: the same map as row-major tokens, and its grid.
    pe.flatten = True
    tokens, hw = pe(x)
    assert hw == (3, 4)
    torch.testing.assert_close(tokens, ref.reshape(2, 12, 8))
    assert [k for k, _ in pe.named_parameters()] == (
        ["proj.weight", "proj.bias"] + (["norm.weight", "norm.bias"] if norm else []))


def test_patch_embed_with_another_projection():
    """A projection of the patch size's stride (L2ViT's conv stem) replaces the conv."""
    proj = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1)
    pe = PatchEmbed(2, 3, 8, proj=proj)
    x = torch.randn(1, 3, 7, 9)
    assert pe.proj is proj
    torch.testing.assert_close(pe(x), proj(F.pad(x, (0, 1, 0, 1))).permute(0, 2, 3, 1))


def test_pad_and_unpad_to_multiples():
    x = torch.randn(2, 3, 10, 13)
    padded = _helpers.pad_hw(x, 4, 8)
    assert padded.shape == (2, 3, 12, 16)
    torch.testing.assert_close(padded, F.pad(x, (0, 3, 0, 2)), rtol=0, atol=0)
    torch.testing.assert_close(_helpers.unpad_hw(padded, 2, 3), x, rtol=0, atol=0)
    nhwc = x.permute(0, 2, 3, 1)
    padded = _helpers.pad_hw(nhwc, 4, 8, channels_last=True)
    torch.testing.assert_close(padded, F.pad(nhwc, (0, 0, 0, 3, 0, 2)), rtol=0, atol=0)
    torch.testing.assert_close(_helpers.unpad_hw(padded, 2, 3, channels_last=True), nhwc)
    assert _helpers.unpad_hw(padded, 2, 3, channels_last=True).is_contiguous()
    # Nothing to pad at a concrete size: the tensor itself, no copy.
    assert _helpers.pad_hw(x, 5, 13) is x and _helpers.unpad_hw(x, 0, 0) is x
    assert [_helpers.pad_amount(n, 4) for n in (1, 4, 5, 8)] == [3, 0, 3, 0]


@pytest.mark.parametrize("shape", [(1, 3, 0, 8), (1, 3, 8, 0), (1, 4, 8, 8), (3, 8, 8)])
def test_patch_embed_rejects_what_is_not_an_image_batch(shape):
    with pytest.raises(AssertionError, match=r"\(B, 3, H, W\) with H, W >= 1"):
        PatchEmbed(4, 3, 8)(torch.randn(shape))


def test_run_blocks_runs_each_block_in_order_with_the_arguments():
    seen = []

    class Step(nn.Module):
        def __init__(self, i):
            super().__init__()
            self.i = i

        def forward(self, x, hw):
            seen.append((self.i, hw))
            return x * 10 + self.i

    x = torch.zeros(1)
    out = _helpers.run_blocks([Step(1), Step(2), Step(3)], x, (4, 5))
    assert out.item() == 123 and seen == [(1, (4, 5)), (2, (4, 5)), (3, (4, 5))]


def _check(**kw):
    args = dict(global_pool="avg", allowed_pools=("avg", ""), num_classes=10)
    _helpers.check_model_args(**{**args, **kw})


@pytest.mark.parametrize("kw,match", [
    (dict(per_stage=dict(depths=(1, 1), num_heads=(1,))), "num_heads has 1 entries, depths has 2"),
    (dict(per_stage=dict(depths=(1, 1)), num_stages=4), "depths has 2 entries, the model has 4"),
    (dict(per_stage=dict(depths=())), "depths has 0 entries"),
    (dict(positive_ints=dict(depths=(2, 0))), "depths must be a positive int per stage"),
    (dict(positive_ints=dict(window_size=7.0)), "window_size must be a positive int"),
    (dict(positive_ints=dict(patch_size=True)), "patch_size must be a positive int"),
    (dict(positive=dict(mlp_ratio=0)), "mlp_ratio must be > 0"),
    (dict(positive=dict(mlp_ratios=(4, -1))), "mlp_ratios must be > 0"),
    (dict(widths=(32, 64), heads=(2, 3)), "stage 1: width 64 is not divisible by num_heads 3"),
    (dict(widths=(30,), heads=(4,)), "^width 30 is not divisible"),
    (dict(global_pool="max"), "global_pool"),
    (dict(num_classes=-1), "num_classes"),
    (dict(attn_drop_rate=1.0), "attn_drop_rate"),
])
def test_argument_checks_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        _check(**kw)


def test_argument_checks_pass_valid_arguments():
    _check(per_stage=dict(depths=(2, 2), num_heads=(1, 2)), positive_ints=dict(
        depths=(2, 2), num_heads=(1, 2), patch_size=4), positive=dict(mlp_ratio=4.0),
        widths=(32, 64), heads=(1, 2), drop_path_rate=0.5)


def test_residual_predictor_kernels_from_the_token_mean():
    torch.manual_seed(0)
    pred = A.LocalResidualPredictor(16, 2)
    assert [k for k, _ in pred.named_parameters()] == ["0.weight", "0.bias", "2.weight",
                                                       "2.bias"]
    x = torch.randn(3, 20, 16)
    m = x.mean(1)
    h = F.gelu(F.conv1d(m[..., None], pred[0].weight, pred[0].bias, groups=2))
    ref = F.conv1d(h, pred[2].weight, pred[2].bias, groups=2).view(3, 16, 3, 3)
    torch.testing.assert_close(pred.kernels(x), ref)


@pytest.mark.parametrize("injective", [True, False])
def test_global_linear_attention_with_prefix_tokens(injective):
    """Explicit weights (InLine's, or the row sum of ReLU features), plus the official grouped-
    conv residual on the grid tokens only; prefix tokens get none."""
    torch.manual_seed(0)
    b, nh, c, hw, p = 2, 2, 8, (3, 4), 1
    n = p + hw[0] * hw[1]
    q, k, v = torch.randn(3, b, n, c).unbind(0)
    kernels = torch.randn(b, c, 3, 3)

    def heads(t):
        return t.view(b, n, nh, c // nh).transpose(1, 2)

    qh, kh, vh = heads(q), heads(k), heads(v)
    if injective:
        dots = qh @ kh.transpose(-2, -1)
        w = (c // nh) ** -0.5 / n * (dots - dots.mean(-1, keepdim=True)) + 1.0 / n
    else:
        a = F.relu(qh) @ F.relu(kh).transpose(-2, -1)
        w = a / (a.sum(-1, keepdim=True) + 1e-6)
    ref = (w @ vh).transpose(1, 2).reshape(b, n, c)
    grid = v[:, p:].transpose(1, 2).reshape(1, b * c, *hw)
    res = F.conv2d(grid, kernels.reshape(b * c, 1, 3, 3), padding=1, groups=b * c)
    ref[:, p:] += res.reshape(b, c, -1).transpose(1, 2)
    out = A.global_linear_attention(q, k, v, nh, hw, kernels, injective, num_prefix_tokens=p)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
