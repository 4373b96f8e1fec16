"""Parameter and FLOP counting with torch's FlopCounterMode (matmuls, convs, attention products).

FLOPs are reported as the papers do: one multiply-add counts once (GMACs). Elementwise work (the
InLine 3x3 residual written as shifted multiply-adds, norms, activations) is not counted, as in the
official counters, which count it only where it is a convolution: about 9*C*H*W per InLine block.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

__all__ = ["count_flops", "count_params"]

aten = torch.ops.aten


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    b, h, nq, d = query_shape
    nk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * nq * nk * (d + dv)   # q k^T and attn v, 2 FLOPs per multiply-add


# The CPU SDPA kernel has no formula in torch's counter; the CUDA ones do.
if aten._scaled_dot_product_flash_attention_for_cpu.default not in \
        torch.utils.flop_counter.flop_registry:
    register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)(
        lambda query, key, value, *args, out_shape=None, **kwargs:
        _sdpa_flops(query, key, value))


# The fused InLine op accumulates each head's q @ M into its output slice in place.
if aten.addmm_ not in flop_registry:
    register_flop_formula(aten.addmm_, get_raw=True)(flop_registry[aten.addmm])


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, size: tuple[int, int], in_chans: int = 3) -> float:
    """Multiply-adds (as the papers' 'FLOPs') of one forward pass on a (1, C, H, W) input."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, *size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2
