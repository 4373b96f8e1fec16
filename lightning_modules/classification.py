"""ImageNet-style classification: a LightningModule, an image-folder LightningDataModule, a
prediction writer and the ``LightningCLI`` behind ``tools/train_cls.py``.

The papers' recipe is configuration (``configs/classification/*.yaml``): timm's
``create_transform`` (RandAugment, random erasing, resize / crop at the model's resolution),
Mixup / CutMix with label smoothing, AdamW with linear warm-up and cosine decay by iteration, no
weight decay on norms, biases, position embeddings, relative tables and temperatures, drop path,
gradient clipping (``trainer.gradient_clip_val``), and model EMA evaluated beside the raw weights.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.loss import SoftTargetCrossEntropy
from timm.models import get_pretrained_cfg
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from heads.classifier import ImageClassifier

from .callbacks import CheckedStateLoading, NonFiniteLoss, use_safe_checkpoint_io
from .checkpoint_checks import (
    check_checkpoint_file,
    check_checkpoint_file_task,
    check_checkpoint_task,
    checkpoint_source,
)
from .config_checks import check_yaml_configs
from .data_checks import DEFAULT_MAX_IMAGE_PIXELS, fetch_skipping, load_rgb
from .distributed import scale_lr, total_batch_size

__all__ = ["ClassificationModule", "ImageFolderDataModule", "PredictionWriter", "cli_main",
           "warmup_cosine"]

IMG_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ---- model ----------------------------------------------------------------------------------

def warmup_cosine(step: int, total: int, warmup: int, lr: float, warmup_lr: float,
                  min_lr: float) -> float:
    """Learning rate at optimizer step ``step``: linear from ``warmup_lr`` to ``lr`` over
    ``warmup`` steps, then cosine from ``lr`` to ``min_lr`` at ``total`` (the Swin / ConvNeXt
    schedules, by iteration)."""
    if step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


class ClassificationModule(CheckedStateLoading, L.LightningModule):
    """A timm backbone of this project + a linear head, trained with the papers' recipe.

    Args:
        model_name: a registered variant, e.g. ``inline_swin_tiny``.
        num_classes: set from the data (``tools/train_cls.py`` links it to the folder count).
        model_kwargs: builder arguments (``drop_path_rate``, ``img_size``, reduced widths...).
        drop_rate: dropout before the head.
        checkpoint: an official or timm-layout checkpoint loaded through the family's filter
            (the head too when its class count matches), in ``setup`` (first stage run) unless
            the Trainer restores a checkpoint set as ``trainer.ckpt_path`` beforehand.
        lr, weight_decay, betas, eps: AdamW; ``lr`` is for the whole (global) batch.
        warmup_epochs, warmup_lr, min_lr: the schedule, stepped per optimizer step.
        mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob, label_smoothing: the loss.
            Mixup / CutMix need an even batch size (the train loader drops the last batch).
        ema_decay: keep an EMA of the weights (e.g. 0.9999) and evaluate it as ``val_ema/*``.
        grad_checkpointing: recompute block activations in backward to save memory.
        compile: ``torch.compile`` the classifier in place (``True`` or a dict of its
            arguments, e.g. ``{mode: max-autotune}``); the EMA copy stays eager (evaluation
            only). Parameter names, hence checkpoints, do not change.
        base_batch_size: the total batch ``lr`` is for; when set, ``lr`` is scaled linearly to
            the actual total batch (processes x batch_size x accumulation), printed at start.
    """

    def __init__(self, model_name: str = "inline_deit_tiny", num_classes: int = 1000,
                 model_kwargs: dict | None = None, drop_rate: float = 0.0,
                 checkpoint: str | None = None, lr: float = 1e-3, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 warmup_epochs: float = 20.0, warmup_lr: float = 1e-6, min_lr: float = 1e-5,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, mixup_prob: float = 1.0,
                 mixup_switch_prob: float = 0.5, label_smoothing: float = 0.1,
                 ema_decay: float | None = None, grad_checkpointing: bool = False,
                 base_batch_size: int | None = None, compile: bool | dict = False):
        super().__init__()
        self.save_hyperparameters()
        self.model = ImageClassifier(model_name, num_classes, drop_rate, **(model_kwargs or {}))
        self._pretrained_pending = bool(checkpoint)  # loaded in setup, see there
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                               prob=mixup_prob, switch_prob=mixup_switch_prob,
                               label_smoothing=label_smoothing, num_classes=num_classes)
        # The EMA copy is refreshed after a pretrained load (setup).
        self.model_ema = None
        if ema_decay:
            self.model_ema = ModelEmaV3(self.model, decay=ema_decay).requires_grad_(False)
        if compile:  # after the EMA's deep copy, which should not copy a compiled call
            self.model.compile(**({} if compile is True else dict(compile)))
        # Top-5 only where it means something (a 4-class demo would always score 1).
        self.topk = [1, 5] if num_classes > 5 else [1]
        self.metrics = torch.nn.ModuleDict({
            f"{split}_{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
            for split in ("val", "val_ema", "test", "test_ema") for k in self.topk})

    def setup(self, stage: str) -> None:
        # The ``checkpoint`` file is read here, once, and not when the Trainer restores this
        # module's own checkpoint (``trainer.ckpt_path`` set before the call): a module rebuilt
        # by ``load_from_checkpoint`` or a resumed run needs no pretrained file.
        if not self._pretrained_pending:
            return
        self._pretrained_pending = False
        if self.trainer.ckpt_path is not None:
            return
        check_checkpoint_file(self.hparams.checkpoint, "--model.checkpoint")
        for note in self.model.load_pretrained(self.hparams.checkpoint):
            rank_zero_info(note)
        if self.model_ema is not None:  # the average starts from the loaded weights
            self.model_ema.module.load_state_dict(self.model.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---- training ---------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None:
            if len(x) % 2:
                raise ValueError(f"Mixup/CutMix need an even batch size, got {len(x)}: change "
                                 "data.batch_size or set model.mixup_alpha=0 model.cutmix_alpha=0")
            x, target = self.mixup(x, y)
            loss = SoftTargetCrossEntropy()(self.model(x), target)
        else:
            loss = F.cross_entropy(self.model(x), y, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.model_ema is not None:
            self.model_ema.update(self.model, step=self.global_step)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=True,
                 batch_size=1)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Before its weights are loaded: a detection / segmentation checkpoint is named as such.
        check_checkpoint_task(checkpoint, "classification",
                              checkpoint_source(trainer=self._trainer))
        self._pretrained_pending = False  # its weights replace any pretrained ones

    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups_weight_decay(self.model, hp.weight_decay,
                                           no_weight_decay_list=self.model.no_weight_decay())
        total = int(self.trainer.estimated_stepping_batches)
        if not math.isfinite(self.trainer.num_training_batches):
            # A run bounded by max_steps: the estimate above did not need the train loader, the
            # warm-up (given in epochs) does.
            self.trainer.fit_loop.setup_data()
        per_epoch = self.trainer.num_training_batches / self.trainer.accumulate_grad_batches
        warmup = min(int(round(hp.warmup_epochs * per_epoch)), total)
        lr = scale_lr(hp.lr, hp.base_batch_size, total_batch_size(
            self.trainer, self.trainer.train_dataloader.batch_size))
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas), eps=hp.eps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(
            step, total, warmup, lr, hp.warmup_lr, hp.min_lr) / lr)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---- evaluation -------------------------------------------------------------------------

    def _eval_step(self, split: str, batch) -> None:
        x, y = batch
        nets = [("", self.model)]
        if self.model_ema is not None:
            nets.append(("_ema", self.model_ema.module))
        for suffix, net in nets:
            logits = net(x)
            self.log(f"{split}{suffix}/loss", F.cross_entropy(logits, y), batch_size=len(x),
                     sync_dist=True)
            for k in self.topk:
                metric = self.metrics[f"{split}{suffix}_{k}"]
                metric(logits, y)
                self.log(f"{split}{suffix}/top{k}", metric, batch_size=len(x),
                         prog_bar=k == 1 and not suffix)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch, batch_idx: int) -> dict:
        x, paths = batch
        net = self.model_ema.module if self.model_ema is not None else self.model
        probs = net(x).softmax(-1)
        top = probs.topk(min(5, probs.shape[-1]), dim=-1)
        return {"paths": list(paths), "indices": top.indices.cpu(), "probs": top.values.cpu()}


# ---- data -----------------------------------------------------------------------------------

class ImageFolder(Dataset):
    """``root/<class>/<image>``: classes are the sorted sub-folder names (as torchvision's
    ImageFolder), or those given, so that val uses train's class indices. ``skip_bad_samples``:
    an unreadable image is logged and the next one taken instead of raising. Images are read by
    ``data_checks.load_rgb`` (upright, RGB, within ``max_image_pixels``)."""

    def __init__(self, root: str | os.PathLike, transform, classes: Sequence[str] | None = None,
                 skip_bad_samples: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root} (expected "
                                    f"{self.root}/<class>/<image>.JPEG)")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.classes = list(classes) if classes is not None else found
        extra = sorted(set(found) - set(self.classes))
        if extra:
            raise ValueError(f"{self.root} has class folders not in the training set: {extra}")
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(str(p), index[c]) for c in found for p in sorted((self.root / c).iterdir())
                        if p.suffix.lower() in IMG_EXTENSIONS]
        if not self.samples:
            raise ValueError(f"no images under {self.root}/<class>/ (extensions "
                             f"{', '.join(IMG_EXTENSIONS)})")
        self.transform = transform
        self.skip_bad_samples = skip_bad_samples
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return fetch_skipping(i, len(self.samples), self._load, self.skip_bad_samples)

    def _load(self, i: int):
        path, label = self.samples[i]
        return self.transform(load_rgb(path, self.max_image_pixels)), label


class ImageFiles(Dataset):
    """Every image under a folder (any layout), for ``predict``; yields (image, path)."""

    def __init__(self, root: str | os.PathLike, transform,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"predict_dir not found: {root} (--data.predict_dir)")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*")
                                                     if p.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise ValueError(f"no images under {root}")
        self.files = [str(p) for p in files]
        self.transform = transform
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return (self.transform(load_rgb(self.files[i], self.max_image_pixels)),
                self.files[i])


class ImageFolderDataModule(L.LightningDataModule):
    """ImageNet layout ``data_dir/{train,val}/<class>/*.JPEG`` with timm's transforms.

    Resolution, crop fraction, interpolation, mean and std default to the model's own
    (``model_name``'s timm pretrained config, linked from the model by the CLI); set them to
    override. ``scale``: the area range of the random-resized crop (ImageNet's 0.08..1);
    ``no_aug``: training images only resized and centre-cropped (fine-tuning, checks).
    ``batch_size`` is per device. ``predict_dir`` (any folder of images) is what
    ``predict`` reads; it defaults to the val images. ``skip_bad_samples``: an unreadable
    training image is logged and skipped (val / predict images always raise: skipping them would
    change the metric or the output). ``max_image_pixels``: the decompression-bomb guard (images
    with more pixels are refused, naming this option; 0 or None turns it off).
    """

    def __init__(self, data_dir: str = "data/imagenet", model_name: str | None = None,
                 batch_size: int = 128, num_workers: int = 8, img_size: int | None = None,
                 crop_pct: float | None = None, interpolation: str | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 scale: tuple[float, float] = (0.08, 1.0),
                 auto_augment: str | None = "rand-m9-mstd0.5-inc1", color_jitter: float = 0.4,
                 re_prob: float = 0.25, re_mode: str = "pixel", re_count: int = 1,
                 no_aug: bool = False, train_split: str = "train", val_split: str = "val",
                 predict_dir: str | None = None, pin_memory: bool = True,
                 skip_bad_samples: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
        super().__init__()
        self.save_hyperparameters()
        cfg = get_pretrained_cfg(model_name) if model_name else None
        cfg_size = cfg.input_size[-1] if cfg else 224
        self.img_size = img_size or cfg_size
        self.crop_pct = crop_pct or (cfg.crop_pct if cfg else 0.875)
        self.interpolation = interpolation or (cfg.interpolation if cfg else "bicubic")
        self.mean = tuple(mean or (cfg.mean if cfg else IMAGENET_DEFAULT_MEAN))
        self.std = tuple(std or (cfg.std if cfg else IMAGENET_DEFAULT_STD))
        # Classes fix the model's head, so they are read now (the CLI links num_classes).
        root = Path(data_dir)
        split = root / train_split if (root / train_split).is_dir() else root / val_split
        if not split.is_dir():
            where = (f"data_dir {root} does not exist" if not root.is_dir() else
                     f"no {train_split}/ or {val_split}/ folder under data_dir {root}")
            raise FileNotFoundError(f"{where} (expected the ImageNet layout: DIR/{train_split}/"
                                    "<class>/*.JPEG); set --data.data_dir (or data.data_dir in "
                                    "the YAML) to the dataset's folder")
        self.classes = sorted(d.name for d in split.iterdir() if d.is_dir())
        if not self.classes:
            raise ValueError(f"{split} has no class sub-folders")
        self._sets: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def transform(self, training: bool):
        hp = self.hparams
        if training:
            return create_transform(self.img_size, is_training=True, no_aug=hp.no_aug,
                                    scale=tuple(hp.scale),
                                    auto_augment=hp.auto_augment,
                                    color_jitter=hp.color_jitter, re_prob=hp.re_prob,
                                    re_mode=hp.re_mode, re_count=hp.re_count,
                                    interpolation=self.interpolation, mean=self.mean, std=self.std)
        return create_transform(self.img_size, is_training=False, crop_pct=self.crop_pct,
                                interpolation=self.interpolation, mean=self.mean, std=self.std)

    def dataset(self, stage: str) -> Dataset:
        if stage not in self._sets:
            hp, root = self.hparams, Path(self.hparams.data_dir)
            limit = hp.max_image_pixels
            if stage == "train":
                ds = ImageFolder(root / hp.train_split, self.transform(True), self.classes,
                                 skip_bad_samples=hp.skip_bad_samples, max_image_pixels=limit)
            elif stage == "predict" and hp.predict_dir:
                ds = ImageFiles(hp.predict_dir, self.transform(False), limit)
            elif stage == "predict":
                ds = ImageFiles(root / hp.val_split, self.transform(False), limit)
            else:  # val and test both read the val split (ImageNet's test labels are private)
                ds = ImageFolder(root / hp.val_split, self.transform(False), self.classes,
                                 max_image_pixels=limit)
            self._sets[stage] = ds
        return self._sets[stage]

    def _loader(self, stage: str) -> DataLoader:
        hp = self.hparams
        return DataLoader(self.dataset(stage), batch_size=hp.batch_size, shuffle=stage == "train",
                          drop_last=stage == "train", num_workers=hp.num_workers,
                          persistent_workers=hp.num_workers > 0 and stage == "train",
                          pin_memory=hp.pin_memory and torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


# ---- CLI --------------------------------------------------------------------------------------

class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results to a CSV: path, then (class, probability) for the top k."""

    def __init__(self, output_file: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        out = Path(self.output_file or Path(trainer.default_root_dir) / "predictions.csv")
        if trainer.world_size > 1:  # one file per rank; the samplers split the images
            out = out.with_name(f"{out.stem}.rank{trainer.global_rank}{out.suffix}")
        classes = trainer.datamodule.classes
        k = len(predictions[0]["indices"][0]) if predictions else 0
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path"] + [c for i in range(1, k + 1) for c in (f"top{i}", f"prob{i}")])
            for batch in predictions:
                for path, idx, prob in zip(batch["paths"], batch["indices"], batch["probs"],
                                           strict=True):
                    w.writerow([path] + [v for j, p in zip(idx.tolist(), prob.tolist(),
                                                           strict=True)
                                         for v in (classes[j], f"{p:.4f}")])
        rank_zero_info(f"predictions written to {out}")


class ClassificationCLI(LightningCLI):
    """``fit`` / ``validate`` / ``test`` / ``predict`` with the data's class count and the
    model's name linked, a checkpoint callback (last + best top-1) and the prediction writer."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model_name", "data.model_name")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.monitor": "val/top1",
                             "checkpoint.mode": "max", "checkpoint.save_top_k": 1,
                             "checkpoint.filename": "best_top1_epoch{epoch}",
                             "checkpoint.auto_insert_metric_name": False})
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        # NaN / inf loss: stop naming the step, or --nonfinite_loss.action skip.
        parser.add_lightning_class_args(NonFiniteLoss, "nonfinite_loss")

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        use_safe_checkpoint_io(trainer)  # atomic checkpoint files, weights_only=True loads
        return trainer

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path here (plain torch.load) for its hyper-parameters: the file
        # and its task are checked first, so that a bad one is named, not a parser error.
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if isinstance(path, str) and Path(path).exists():
            check_checkpoint_file(path, "--ckpt_path checkpoint")
            check_checkpoint_file_task(path, "classification")
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        # The data is checked before training (file lists: missing folders, no images), and a
        # resume from 'last' that has nothing to resume fails instead of training afresh
        # (Lightning only warns).
        self.datamodule.dataset("train")
        if self.trainer.limit_val_batches:
            self.datamodule.dataset("val")
        if self.config[self.subcommand].get("ckpt_path") == "last":
            _check_last_checkpoint(self.trainer)


def _check_last_checkpoint(trainer: L.Trainer) -> None:
    """``--ckpt_path last`` finds a ``last*.ckpt`` in a checkpoint callback's folder."""
    folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
               if getattr(cb, "dirpath", None)]
    if not folders:
        raise ValueError("--ckpt_path last: no checkpoint.dirpath is set, so there is no "
                         "folder to resume from (each run would write to a new version "
                         "folder); set checkpoint.dirpath, or give --ckpt_path PATH")
    if not any(any(f.glob("last*.ckpt")) for f in folders if f.is_dir()):
        shown = ", ".join(map(str, folders))
        raise FileNotFoundError(f"--ckpt_path last: no last.ckpt in {shown}: nothing to resume "
                                "(Lightning would silently start afresh). Start without "
                                "--ckpt_path, or give the checkpoint's path")


def cli_main(args: list[str] | None = None, run: bool = True) -> ClassificationCLI:
    """The classification command line (``tools/train_cls.py``); YAML syntax errors in ``-c``
    files are named with the file and line before jsonargparse reads them."""
    check_yaml_configs(args)
    return ClassificationCLI(ClassificationModule, ImageFolderDataModule, args=args, run=run,
                             save_config_kwargs={"overwrite": True})
