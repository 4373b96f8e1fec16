"""Run by test_ddp.py in a subprocess, with one process or two (Lightning's DDP, gloo on CPU).

Lightning's DDP launcher starts the second process by running this file again with the same
arguments, so everything here is plain top-level code driven by ``sys.argv``:

    ddp_worker.py grads DEVICES BATCH DATA_DIR OUT     first-step gradients of a classifier
    ddp_worker.py eval-det DEVICES COCO_ROOT OUT       COCO metrics of fixed predictions
    ddp_worker.py eval-seg DEVICES ADE_ROOT OUT        mIoU of fixed predictions

Rank 0 writes OUT (torch.save for gradients, JSON for metrics).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
DET = ROOT / "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"
SEG = ROOT / "configs/demo/fpn_inline-pvt-demo_demo-ade.py"
SMALL = dict(embed_dims=[16, 32, 32, 64], num_heads=[1, 1, 1, 2], mlp_ratios=[2, 2, 2, 2],
             depths=[1, 1, 1, 1], img_size=32, drop_path_rate=0.0)


def trainer(devices: int, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=devices,
                     strategy="ddp" if devices > 1 else "auto", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


class FirstGradients(L.Callback):
    """Saves the (already all-reduced) gradients before the first optimizer step."""

    def __init__(self, out: str):
        self.out = out

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if trainer.global_step == 0 and trainer.is_global_zero:
            torch.save({n: p.grad.detach().clone() for n, p in module.model.named_parameters()
                        if p.grad is not None}, self.out)


def grads(devices: int, batch: int, data: str, out: str) -> None:
    from lightning_modules.classification import ClassificationModule, ImageFolderDataModule

    L.seed_everything(0)
    dm = ImageFolderDataModule(data, batch_size=batch, num_workers=0, img_size=32, no_aug=True,
                               pin_memory=False)
    module = ClassificationModule("inline_pvt_tiny", num_classes=dm.num_classes,
                                  model_kwargs=SMALL, mixup_alpha=0, cutmix_alpha=0,
                                  warmup_epochs=0)
    trainer(devices, max_steps=1, limit_val_batches=0,
            callbacks=[FirstGradients(out)]).fit(module, datamodule=dm)


def _mm(task: str, root: str):
    from lightning_modules.mm_bridge import build_task, load_config

    data = root.rstrip("/") + "/"
    opts = {f"{s}_dataloader.{k}": v for s in ("train", "val", "test")
            for k, v in (("dataset.data_root", data), ("num_workers", 0),
                         ("persistent_workers", False))}
    if task == "det":
        opts["val_dataloader.batch_size"] = 2  # batches of two: padding then shows per rank
        from lightning_modules.detection import DetectionModule as Module
        ann = data + "annotations/instances_val2017.json"
        opts.update({"val_evaluator.ann_file": ann, "test_evaluator.ann_file": ann})
        cfg = load_config(DET, opts)
    else:
        from lightning_modules.segmentation import SegmentationModule as Module
        cfg = load_config(SEG, opts)
    return build_task(cfg, module_cls=Module)


def _image_index(sample) -> int:
    return int("".join(c for c in Path(sample.img_path).stem if c.isdigit()))


def predict_det(inputs, data_samples, rescale=True):
    """Ground truth for two images in three, nothing for the rest: a mAP well inside (0, 1)
    that a duplicated or a missing image would change."""
    for s in data_samples:
        pred = s.gt_instances.clone()
        keep = torch.full((len(pred),), _image_index(s) % 3 != 0)
        pred.scores = torch.ones(len(pred))
        pred.masks = pred.masks.to_tensor(torch.bool, "cpu")
        s.pred_instances = pred[keep]
    return data_samples


def predict_seg(inputs, data_samples):
    """Ground truth for odd-numbered images, class 1 everywhere for even ones."""
    for s in data_samples:
        gt = s.gt_sem_seg.data
        pred = gt.clone() if _image_index(s) % 2 else torch.full_like(gt, 1)
        s.set_data({"pred_sem_seg": type(s.gt_sem_seg)(data=pred)})
    return data_samples


def evaluate(task: str, devices: int, root: str, out: str) -> None:
    module, dm = _mm(task, root)
    module.model.predict = predict_det if task == "det" else predict_seg
    t = trainer(devices)
    metrics = t.validate(module, datamodule=dm, verbose=False)[0]
    if t.is_global_zero:
        seen = len(module._evaluator("val").metrics[0].results)  # cleared after evaluate
        Path(out).write_text(json.dumps({"metrics": metrics, "results_left": seen,
                                         "world_size": t.world_size}))


if __name__ == "__main__":
    mode, devices = sys.argv[1], int(sys.argv[2])
    if mode == "grads":
        grads(devices, int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif mode in ("eval-det", "eval-seg"):
        evaluate(mode[5:], devices, sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
