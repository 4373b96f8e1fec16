"""ADE20K-style semantic segmentation: the shared MM bridge with mmseg's registries.

Training (the decode and auxiliary heads' losses), validation and testing (mmseg's
``IoUMetric``: mIoU, mAcc, aAcc, logged after every validation) come from the bridge.
What segmentation adds: SyncBN reverted where it cannot synchronise, prediction with the
config's test mode, and a switch between whole-image and sliding-window inference.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmengine.model import revert_sync_batchnorm

from .mm_bridge import MMModelModule

__all__ = ["SegmentationModule"]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


class SegmentationModule(MMModelModule):
    """An mmseg segmentor (UperNet, Semantic FPN, ...) trained and evaluated from its config."""

    task_scope = "mmseg"
    monitor = "mIoU"

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # The recipes use SyncBN for 8-GPU runs. torch's SyncBatchNorm only synchronises on
        # accelerators (it raises on CPU under DDP) and does nothing useful in one process, so,
        # as mmengine's Runner does when not distributed, it becomes plain BatchNorm there.
        # Called before the optimizer is built and before any DDP wrapping.
        if self.trainer.world_size == 1 or self.trainer.strategy.root_device.type == "cpu":
            self.model = revert_sync_batchnorm(self.model)

    # ---- inference ----------------------------------------------------------------------------

    @property
    def test_mode(self) -> str:
        """'whole' or 'slide', from ``model.test_cfg`` (the config's test mode)."""
        return self.model.test_cfg.get("mode", "whole")

    def set_test_mode(self, mode: str, crop_size: int | Sequence[int] | None = None,
                      stride: int | Sequence[int] | None = None) -> None:
        """Switch inference to the whole image or to sliding windows of ``crop_size`` moved by
        ``stride`` (overlapping logits are averaged), e.g. for images far larger than the
        training crop. Changes ``model.test_cfg`` only; the weights are untouched."""
        if mode == "whole":
            if crop_size is not None or stride is not None:
                raise ValueError("crop_size and stride apply to mode='slide' only")
            self.model.test_cfg = type(self.model.test_cfg)(mode="whole")
            return
        if mode != "slide":
            raise ValueError(f"test mode must be 'whole' or 'slide', got {mode!r}")
        if crop_size is None or stride is None:
            raise ValueError("mode='slide' needs crop_size and stride, e.g. crop_size=512, "
                             "stride=341")
        crop, step = _pair(crop_size, "crop_size"), _pair(stride, "stride")
        if any(s > c for s, c in zip(step, crop, strict=True)):
            # mmseg would leave strips between windows that no window covers.
            raise ValueError(f"stride {step} larger than crop_size {crop}: windows would leave "
                             "gaps")
        self.model.test_cfg = type(self.model.test_cfg)(mode="slide", crop_size=crop,
                                                        stride=step)
