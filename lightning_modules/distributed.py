"""What changes with the number of processes: the total batch and the learning rate for it.

The rule, stated once: a config's learning rate is for its base total batch (the papers': 16
images for detection and segmentation, 1024 or 4096 for ImageNet); when enabled, it is scaled
linearly to the actual total batch = processes (devices x nodes) x per-process batch x gradient
accumulation (Goyal et al., 2017), as mmengine's ``auto_scale_lr`` does. Both the MM bridge and
the classification module apply it through :func:`scale_lr` and print the outcome at start.
"""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_info

__all__ = ["scale_lr", "total_batch_size"]


def total_batch_size(trainer, per_process_batch: int) -> int:
    """Images per optimizer step over all processes."""
    return trainer.world_size * per_process_batch * trainer.accumulate_grad_batches


def scale_lr(lr: float, base_batch_size: int | None, total: int, enable: bool = True,
             how_to_enable: str = "") -> float:
    """``lr`` scaled linearly from ``base_batch_size`` to ``total`` when ``enable``; prints the
    total batch and the learning rate used either way."""
    if not base_batch_size or not enable or total == base_batch_size:
        note = ""
        if base_batch_size and total != base_batch_size:
            note = (f" (the config's lr is for a total batch of {base_batch_size}; not scaled"
                    f"{', enable with ' + how_to_enable if how_to_enable else ''})")
        rank_zero_info(f"total batch {total}: lr {lr:g}{note}")
        return lr
    if base_batch_size <= 0:
        raise ValueError(f"base_batch_size must be positive, got {base_batch_size}")
    scaled = lr * total / base_batch_size
    rank_zero_info(f"total batch {total}, base {base_batch_size}: lr {lr:g} scaled linearly to "
                   f"{scaled:g}")
    return scaled
