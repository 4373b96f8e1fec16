"""L2ViT against independent references: the official parameter names, and an explicit
token-layout forward written from the paper's formulas (N x N attention weights, windows looped
one by one), sharing only the weights with the model (the timm contract and the official parameter
counts: test_contract.py)."""


import pytest
import timm
import torch
import torch.nn.functional as F

from backbones import l2vit as L

torch.manual_seed(0)

# Every stage keeps one LWA and one LGA block; head dim 32 as in the released models.
TINY = dict(dims=(32, 64, 96, 128), depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4),
            drop_path_rate=0.0, num_classes=10)


def tiny(**kw):
    return timm.create_model("l2vit_tiny", **{**TINY, **kw})


def randomise(model):
    """Non-trivial norms, BN statistics and temperatures, so the reference comparison bites."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("temperature"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.05)
            elif t.dim() == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                t.copy_(base + 0.2 * torch.randn(t.shape, generator=g))
        # Larger q, k in the linear attentions: part of the denominators then exceed the clamp
        # (100), so both sides of it are exercised.
        for mod in model.modules():
            if hasattr(mod, "temperature"):
                mod.qkv.weight.mul_(3.0)
    return model


# ------------------------------------------------------------------ explicit reference forward
def ref_forward(sd, dims, depths, heads, x, window=7, global_attn="l2vit"):
    """(B, N, C) tokens as in the official code; returns (logits, per-stage NCHW maps)."""

    def ln(t, p):
        return F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-5)

    def lin(t, p):
        return F.linear(t, sd[p + ".weight"], sd[p + ".bias"])

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"],
                            sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)

    def grid(t, h, w):
        return t.transpose(1, 2).reshape(t.shape[0], -1, h, w)

    def tokens(g):
        return g.flatten(2).transpose(1, 2)

    def dwconv(t, p, h, w):
        wt = sd[p + ".weight"]
        return tokens(F.conv2d(grid(t, h, w), wt, sd[p + ".bias"], padding=wt.shape[-1] // 2,
                               groups=wt.shape[0]))

    def split(t, nh):
        b, n, c = t.shape
        return t.view(b, n, nh, c // nh).transpose(1, 2)

    def merge(t):
        b, nh, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, nh * d)

    def softmax_attn(t, p, nh):
        q, k, v = (split(u, nh) for u in lin(t, p + ".qkv").chunk(3, dim=-1))
        a = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
        return lin(merge(a @ v), p + ".proj")

    def linear_attn(t, p, nh):
        q, k, v = (split(u, nh) for u in lin(t, p + ".qkv").chunk(3, dim=-1))
        a = F.relu(q) @ F.relu(k).transpose(-2, -1)                  # N x N, unnormalised
        out = (a @ v) * sd[p + ".temperature"] / a.sum(-1, keepdim=True).clamp(min=100.0)
        return lin(merge(out), p + ".proj")

    def mlp(t, p):
        return lin(F.gelu(lin(t, p + ".fc1")), p + ".fc2")

    # stem: pad to a multiple of 4, conv-BN-ReLU-conv-BN, LN on tokens
    x = F.pad(x, (0, -x.shape[-1] % 4, 0, -x.shape[-2] % 4))
    s = "downsample_layers.0.proj.proj."
    x = F.relu(bn(F.conv2d(x, sd[s + "0.weight"], sd[s + "0.bias"], stride=2, padding=1),
                  s + "1"))
    x = bn(F.conv2d(x, sd[s + "3.weight"], sd[s + "3.bias"], stride=2, padding=1), s + "4")
    h, w = x.shape[-2:]
    t = ln(tokens(x), "downsample_layers.0.norm")
    maps = []
    for i, (c, depth, nh) in enumerate(zip(dims, depths, heads, strict=True)):
        if i:
            p = f"downsample_layers.{i}."
            g = grid(ln(t, p + "norm"), h, w)
            g = F.pad(g, (0, w % 2, 0, h % 2))
            g = F.conv2d(g, sd[p + "proj.weight"], sd[p + "proj.bias"], stride=2)
            h, w = g.shape[-2:]
            t = tokens(g)
        for j in range(depth):
            p = f"stages.{i}.{j}."
            if j % 2 == 0:   # LWA
                sc = t + dwconv(t, p + "cpe.0.proj", h, w)
                y = ln(sc, p + "norm1").view(-1, h, w, c)
                y = F.pad(y, (0, 0, 0, -w % window, 0, -h % window))
                out = torch.zeros_like(y)
                for r in range(0, y.shape[1], window):
                    for q in range(0, y.shape[2], window):
                        win = y[:, r:r + window, q:q + window].reshape(-1, window * window, c)
                        out[:, r:r + window, q:q + window] = softmax_attn(
                            win, p + "attn", nh).view(-1, window, window, c)
                t = sc + out[:, :h, :w].reshape(-1, h * w, c)
                t = t + dwconv(t, p + "cpe.1.proj", h, w)
                t = t + mlp(ln(t, p + "norm2"), p + "mlp")
            else:            # LGA
                t = t + dwconv(t, p + "cpe.0.proj", h, w)
                y = ln(t, p + "norm1")
                attn = linear_attn if global_attn == "l2vit" else softmax_attn
                t = t + attn(y, p + "attn", nh)
                y = ln(t, p + "norm3")
                y = F.gelu(dwconv(y, p + "local_mp.conv1", h, w))
                y = tokens(bn(grid(y, h, w), p + "local_mp.bn"))
                t = t + dwconv(y, p + "local_mp.conv2", h, w)
                t = t + mlp(ln(t, p + "norm2"), p + "mlp")
        maps.append(grid(t, h, w))
    logits = lin(ln(t, "norm").mean(1), "head")
    return logits, maps


@pytest.mark.parametrize("global_attn", ["l2vit", "softmax"])
def test_matches_explicit_reference(global_attn):
    """Odd size, not a multiple of 4: stem padding, window padding (12x17 -> 14x21 windows of 7),
    odd maps before every downsampling."""
    m = randomise(tiny(global_attn=global_attn)).eval()
    x = torch.randn(1, 3, 45, 67) * 3
    sd = m.state_dict()
    ref_logits, ref_maps = ref_forward(sd, TINY["dims"], TINY["depths"], TINY["num_heads"], x,
                                       global_attn=global_attn)
    with torch.no_grad():
        final, maps = m.forward_intermediates(x)
        logits = m.forward_head(final)
    assert [tuple(f.shape[-2:]) for f in maps] == [(12, 17), (6, 9), (3, 5), (2, 3)]
    for a, b in zip(maps, ref_maps, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ official layout
def test_official_names_and_shapes():
    with torch.device("meta"):
        sd = timm.create_model("l2vit_tiny").state_dict()
    expected = {
        "downsample_layers.0.proj.proj.0.weight": (48, 3, 3, 3),
        "downsample_layers.0.proj.proj.1.running_var": (48,),
        "downsample_layers.0.proj.proj.3.weight": (96, 48, 3, 3),
        "downsample_layers.0.proj.proj.4.weight": (96,),
        "downsample_layers.0.norm.weight": (96,),
        "downsample_layers.2.norm.weight": (192,),
        "downsample_layers.2.proj.weight": (384, 192, 2, 2),
        "stages.0.0.cpe.0.proj.weight": (96, 1, 3, 3),
        "stages.0.0.cpe.1.proj.weight": (96, 1, 3, 3),
        "stages.0.0.attn.qkv.weight": (288, 96),
        "stages.0.0.attn.qkv.bias": (288,),
        "stages.2.5.attn.temperature": (12, 1, 1),
        "stages.2.5.attn.proj.weight": (384, 384),
        "stages.2.5.norm3.weight": (384,),
        "stages.2.5.local_mp.conv1.weight": (384, 1, 7, 7),
        "stages.2.5.local_mp.bn.running_mean": (384,),
        "stages.2.5.local_mp.conv2.weight": (384, 1, 7, 7),
        "stages.3.1.mlp.fc1.weight": (3072, 768),
        "stages.3.1.mlp.fc2.weight": (768, 3072),
        "norm.weight": (768,),
        "head.weight": (1000, 768),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    # LWA blocks (even index) have no temperature, LCM or second LN; LGA blocks one CPE.
    assert "stages.0.0.attn.temperature" not in sd and "stages.0.0.norm3.weight" not in sd
    assert "stages.0.1.cpe.1.proj.weight" not in sd
    assert not any("relative_position" in k for k in sd)


# ------------------------------------------------------------------ intermediates
def test_intermediates_norm_fmt_and_pruning():
    m = tiny().eval()
    x = torch.randn(1, 3, 90, 123)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x)
        early = m.forward_intermediates(x, indices=[0, 1], stop_early=True, output_fmt="NHWC",
                                        intermediates_only=True)
    torch.testing.assert_close(m.norm(inter[3].permute(0, 2, 3, 1)).permute(0, 3, 1, 2), final)
    torch.testing.assert_close(early[1], inter[1].permute(0, 2, 3, 1))
    assert m.prune_intermediate_layers([0, 1]) == [0, 1] and len(m.stages) == 2


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_other_window_wrapped():
    """A checkpoint from a model built at 384 with window 12 (the official 384 fine-tune),
    wrapped as {'model': ...} with DDP prefixes, loads strictly into a window-7 model."""
    src = randomise(tiny(window_size=12, img_size=384)).eval()
    ckpt = {"model": {"module." + k: v for k, v in src.state_dict().items()}, "epoch": 3}
    dst = tiny().eval()
    dst.load_state_dict(L.checkpoint_filter_fn(ckpt, dst), strict=True)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)
    # The softmax counterpart takes the same checkpoint minus the temperatures; a headless
    # model drops the classifier.
    soft = tiny(global_attn="softmax", num_classes=0)
    soft.load_state_dict(L.checkpoint_filter_fn(ckpt, soft), strict=True)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="global_attn"):
        tiny(global_attn="inline")
    with pytest.raises(ValueError, match="window_size"):
        tiny(window_size=0)
    with pytest.raises(ValueError, match="divisible"):
        tiny(num_heads=(3, 2, 3, 4))
    with pytest.raises(TypeError, match="attn_types"):
        tiny(attn_types="SSSS")


# ------------------------------------------------------------------ API details and numerics
def test_softmax_counterpart_and_api():
    soft = tiny(global_attn="softmax")
    lin = tiny()
    n_lga = sum(h * (d // 2) for h, d in zip(TINY["num_heads"], TINY["depths"], strict=True))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(lin) - count(soft) == n_lga           # only the temperatures differ
    assert soft(torch.randn(1, 3, 33, 41)).shape == (1, 10)
    assert lin.no_weight_decay() == {n for n, _ in lin.named_parameters()
                                     if n.endswith("temperature")}
    assert len(lin.no_weight_decay()) == sum(d // 2 for d in TINY["depths"])
    # No pooling: per-position logits, NCHW.
    lin.reset_classifier(10, global_pool="")
    assert lin.forward_head(torch.randn(2, 128, 3, 4)).shape == (2, 10, 3, 4)
