"""COCO detection / instance segmentation: the shared MM bridge with mmdet's registries."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .mm_bridge import MMModelModule


class DetectionModule(MMModelModule):
    """An mmdet model (Mask R-CNN, RetinaNet, ...) trained and evaluated from its config.

    Under mixed precision (``--trainer.precision bf16-mixed`` / ``16-mixed``) the backbone and
    neck run in autocast and the heads in float32: mmcv 2.1's nms reads float32 boxes only (CPU
    and CUDA) and its RoIAlign has no bf16 kernel, so proposals and RoI features must be float32.
    The heads are a small part of the work at the resolutions where precision matters.
    """

    task_scope = "mmdet"
    monitor = "coco/bbox_mAP"

    @contextlib.contextmanager
    def _heads_in_float32(self) -> Iterator[None]:
        device = self.device.type
        if not torch.is_autocast_enabled(device):
            yield
            return
        dtype = torch.get_autocast_dtype(device)
        model = self.model
        extract_feat = model.extract_feat

        def mixed_features(inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with torch.autocast(device, dtype=dtype):
                feats = extract_feat(inputs)
            return tuple(f.float() for f in feats)

        # mmdet's detectors all reach the backbone through `extract_feat`: running it in
        # autocast inside a float32 region is the one change that fits every detector.
        model.extract_feat = mixed_features
        try:
            with torch.autocast(device, enabled=False):
                yield
        finally:
            del model.extract_feat

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        with self._heads_in_float32():
            return super().training_step(batch, batch_idx)

    def _eval_step(self, split: str, batch: dict) -> None:
        with self._heads_in_float32():
            super()._eval_step(split, batch)

    def predict_step(self, batch: dict, batch_idx: int = 0, dataloader_idx: int = 0) -> list:
        with self._heads_in_float32():
            return super().predict_step(batch, batch_idx, dataloader_idx)
