"""Run by test_aspect_ratio.py in a subprocess, on one process or two (Lightning's DDP, gloo on
CPU): the demo detection config's training loader as the Trainer uses it, for EPOCHS epochs.

    aspect_ratio_worker.py DEVICES COCO_ROOT BATCH EPOCHS OUT

Lightning's DDP launcher runs this file again for the second process, so everything is driven
by ``sys.argv``. Each rank writes ``OUT.rank<r>.json``: the loader's batch sampler and sampler
classes, its length, and per epoch the batches as (image id, height, width) of each sample;
rank 0 also writes the dataset's (image id, height, width) by index.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
DET = ROOT / "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"


def data_module(root: str, batch: int, **options):
    """The demo config's data module on ``root``, in-process loading."""
    from lightning_modules.mm_bridge import MMDataModule, load_config

    data = root.rstrip("/") + "/"
    opts = {f"{s}_dataloader.{k}": v for s in ("train", "val", "test")
            for k, v in (("dataset.data_root", data), ("num_workers", 0),
                         ("persistent_workers", False))}
    opts["train_dataloader.batch_size"] = batch
    return MMDataModule(load_config(DET, {**opts, **options}))


class Recorder(L.LightningModule):
    """No model: one parameter (so DDP has a gradient to reduce) and a record of what the
    training loader gives."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.batches: dict[int, list[list[list[int]]]] = {}
        self.loader: dict = {}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # MM data samples stay where they are

    def on_train_start(self) -> None:
        loader = self.trainer.train_dataloader
        self.loader = {"batch_sampler": type(loader.batch_sampler).__name__,
                       "sampler": type(getattr(loader.batch_sampler, "sampler", None)).__name__,
                       "len": len(loader), "num_training_batches":
                       self.trainer.num_training_batches,
                       "estimated_stepping_batches": self.trainer.estimated_stepping_batches}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.batches.setdefault(self.current_epoch, []).append(
            [[int(s.img_id), *map(int, s.img_shape)] for s in batch["data_samples"]])
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(devices: int, root: str, batch: int, epochs: int, out: str) -> None:
    L.seed_everything(0)
    dm = data_module(root, batch)
    module = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=devices,
                        strategy="ddp" if devices > 1 else "auto", max_epochs=epochs,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    record = {"rank": trainer.global_rank, "world_size": trainer.world_size, **module.loader,
              "batches": module.batches}
    if trainer.is_global_zero:
        ds = dm.dataset("train")
        record["dataset"] = [[int(ds.get_data_info(i)["img_id"]), ds.get_data_info(i)["height"],
                              ds.get_data_info(i)["width"]] for i in range(len(ds))]
    Path(f"{out}.rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
