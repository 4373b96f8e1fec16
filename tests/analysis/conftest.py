"""Tiny models of every family and attention type, for the analysis tests."""

from collections.abc import Callable

import pytest
import timm
import torch

import backbones  # noqa: F401  (registers the families)

# name -> (timm name, overrides, input (H, W)). Sizes that are not multiples of the windows,
# stripes or strides on purpose: padding must be handled as the modules handle it.
TINY = {
    "deit_inline": ("inline_deit_tiny", dict(embed_dim=32, depth=2, num_heads=2, patch_size=8,
                                             img_size=48), (48, 40)),
    "deit_ILS": ("inline_deit_tiny", dict(embed_dim=32, depth=3, num_heads=2, patch_size=8,
                                          img_size=48, attn_types="ILS"), (40, 48)),
    "pvt_inline": ("inline_pvt_tiny", dict(embed_dims=(16, 32, 32, 32), num_heads=(1, 2, 2, 2),
                                           depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2),
                                           img_size=64), (60, 52)),
    # spatial-reduction softmax (sr 8, 4), plain linear, InLine
    "pvt_SSLI": ("inline_pvt_tiny", dict(embed_dims=(16, 32, 32, 32), num_heads=(1, 2, 2, 2),
                                         depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2),
                                         img_size=64, attn_types="SSLI"), (60, 64)),
    # the 'local only' ablation: row-sum linear attention + predicted residual
    "pvt_local_only": ("inline_pvt_tiny", dict(embed_dims=(16, 32, 32, 32),
                                               num_heads=(1, 2, 2, 2), depths=(1, 1, 1, 1),
                                               mlp_ratios=(2, 2, 2, 2), img_size=64,
                                               inline_injective=False), (64, 64)),
    # Swin window softmax with shift and relative bias on a map that needs padding
    "swin_SS": ("inline_swin_tiny", dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                                         attn_types="SS", window_size=4), (56, 60)),
    "swin_IL_relu": ("inline_swin_tiny", dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                                              attn_types="IL", window_size=4, kernel="relu"),
                     (48, 56)),
    "cswin_ISSS": ("inline_cswin_tiny", dict(embed_dim=16, depths=(1, 1, 1, 1),
                                             num_heads=(1, 2, 2, 4), split_size=(1, 2, 3, 2),
                                             attn_types="IISS"), (76, 68)),
    "cswin_LISS": ("inline_cswin_tiny", dict(embed_dim=16, depths=(1, 1, 1, 1),
                                             num_heads=(1, 2, 2, 4), split_size=(1, 2, 2, 2),
                                             attn_types="LISS"), (64, 72)),
    "l2vit": ("l2vit_tiny", dict(dims=(16, 32, 32, 32), depths=(2, 2, 2, 2),
                                 num_heads=(1, 2, 2, 2), window_size=4), (72, 60)),
    "l2vit_softmax": ("l2vit_tiny", dict(dims=(16, 32, 32, 32), depths=(2, 2, 2, 2),
                                         num_heads=(1, 2, 2, 2), window_size=4,
                                         global_attn="softmax"), (64, 64)),
}


@pytest.fixture
def tiny() -> Callable[[str], tuple[torch.nn.Module, torch.Tensor]]:
    """A tiny model of ``TINY[key]`` in eval mode and two random images for it. BatchNorm and
    the output projections get non-trivial values so that nothing passes by being zero."""

    def make(key: str, batch: int = 2) -> tuple[torch.nn.Module, torch.Tensor]:
        name, kwargs, (h, w) = TINY[key]
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=0, **kwargs).eval()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                # a trained model's relative bias tables are far from their 0.02-std init
                if getattr(m, "relative_position_bias_table", None) is not None:
                    m.relative_position_bias_table.normal_(0, 1.0)
        return model, torch.randn(batch, 3, h, w)

    return make
