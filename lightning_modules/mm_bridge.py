"""An MM config as a LightningModule + LightningDataModule, shared by detection and segmentation.

The config is the single source of truth: ``model`` (with its ``data_preprocessor``),
``train_dataloader`` / ``val_dataloader`` / ``test_dataloader``, ``val_evaluator`` /
``test_evaluator``, ``optim_wrapper`` (optimizer, ``paramwise_cfg``, ``clip_grad``,
``accumulative_counts``), ``param_scheduler`` and ``train_cfg`` (length, validation interval).
Trainer flags only choose where and how the run happens.

The path from a config to a training step::

    load_config(path)            reads it once and enters its registry scope (``default_scope``)
    build_task(cfg)              -> (DetectionModule | SegmentationModule, MMDataModule), the
                                    module given the dataset's metadata by the data module
    Trainer.fit(module, data)    setup('fit'): ``init_weights`` (pretrained files) unless resuming
                                 configure_optimizers: mmengine's optimizer and schedulers,
                                    stepped by Lightning (``lr_scheduler_step``)
                                 training_step: data_preprocessor -> model(mode='loss')

Mirrors mmengine's Runner where it matters for results: the optimizer comes from
``build_optim_wrapper``; schedulers are built with ``epoch_length`` = optimizer steps per epoch and
default ``end`` from ``train_cfg``, stepped after every optimizer step (``by_epoch=False``) or
epoch, as ``ParamSchedulerHook`` does; the evaluator sees every validation sample once
(mmengine's ``collect_results`` undoes the interleaving and padding of distributed samplers).

A checkpoint holds the config (as a plain dict) and the dataset metadata, so
``DetectionModule.load_from_checkpoint(path)`` rebuilds the module from the file alone.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from mmengine.config import Config, ConfigDict
from mmengine.evaluator import Evaluator
from mmengine.optim import build_optim_wrapper
from mmengine.registry import FUNCTIONS, MODELS, PARAM_SCHEDULERS, init_default_scope
from mmengine.utils import import_modules_from_strings
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from .aspect_ratio import AspectRatioBatches
from .callbacks import CheckedStateLoading
from .checkpoint_checks import SCOPE_TASKS, check_checkpoint_task, checkpoint_source
from .coco_checks import check_annotation_file
from .config_checks import check_class_count, check_config, check_data_paths, read_config_file
from .data_checks import DEFAULT_MAX_IMAGE_PIXELS, build_checked_dataset
from .distributed import scale_lr, total_batch_size

__all__ = ["MMDataModule", "MMModelModule", "build_task", "load_config", "task_module",
           "trainer_settings"]

SCOPES = ("mmdet", "mmseg")


def _ignore_index(cfg: Config) -> int:
    """The label value segmentation losses and metrics ignore (the decode head's, 255 by
    default)."""
    head = (cfg.get("model") or {}).get("decode_head") or {}
    head = head[0] if isinstance(head, list | tuple) and head else head
    return head.get("ignore_index", 255) if isinstance(head, Mapping) else 255


def load_config(config: str | os.PathLike | Mapping | Config,
                cfg_options: dict | None = None) -> Config:
    """The MM config from a file (``_base_`` inheritance, ``custom_imports``), a plain dict (as
    checkpoints store it) or a ``Config`` (returned as is, not copied), with ``cfg_options``
    merged; enters the config's registry scope, so that the ``type`` names of its model, data and
    metrics resolve in mmdet's or mmseg's registries. The one place the scope is set."""
    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = Config(copy.deepcopy(dict(config)))
        if cfg.get("custom_imports"):  # Config.fromfile does this for files
            import_modules_from_strings(**cfg.custom_imports)
    else:  # a missing file or _base_, a syntax error: named with the file at fault
        cfg = read_config_file(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get("default_scope")
    if scope not in SCOPES:
        raise ValueError(f"the config's default_scope is {scope!r}; set default_scope='mmdet' "
                         "(detection) or 'mmseg' (segmentation), e.g. by inheriting "
                         "configs/_base_/default_runtime.py or seg_runtime.py")
    init_default_scope(scope)
    return cfg


def task_module(cfg: Config) -> type[MMModelModule]:
    """The LightningModule class of a config's task, by its ``default_scope``."""
    if cfg.default_scope == "mmseg":
        from .segmentation import SegmentationModule
        return SegmentationModule
    from .detection import DetectionModule
    return DetectionModule


def build_task(config: str | os.PathLike | Mapping | Config, cfg_options: dict | None = None,
               module_cls: type[MMModelModule] | None = None, eval_split: str = "val",
               train: bool = False) -> tuple[MMModelModule, MMDataModule]:
    """The LightningModule of the config's task (``module_cls``, by default the one of its
    ``default_scope``) and its data module, from one config. Before any model is built: the
    config's keys are checked (``config_checks``), the data module builds (and checks) the
    ``eval_split`` dataset, whose metadata (class names, palette) the module gets, and its
    evaluator's annotation file, and with ``train`` the training dataset too; the heads' class
    counts are matched to the dataset's. Bad input fails here, not in the first step."""
    cfg = load_config(config, cfg_options)
    check_config(cfg)
    module_cls = module_cls or task_module(cfg)
    data = MMDataModule(cfg)
    meta = data.dataset_meta(eval_split)
    if train and cfg.get("train_dataloader"):
        data.dataset("train")
    _check_evaluator_files(cfg, eval_split, data, meta)
    check_class_count(cfg, meta.get("classes") or ())
    return module_cls(cfg, dataset_meta=meta), data


def _check_evaluator_files(cfg: Config, split: str, data: MMDataModule, meta: dict) -> None:
    """The ``{split}_evaluator``'s COCO annotation files (``CocoMetric`` reads its own) exist and
    are sound, unless it is the dataset's own file, checked already."""
    evaluators = cfg.get(f"{split}_evaluator") or []
    evaluators = [evaluators] if isinstance(evaluators, Mapping) else list(evaluators)
    dataset = data.dataset(split) if cfg.get(f"{split}_dataloader") else None
    checked = os.path.abspath(str(getattr(dataset, "ann_file", "") or ""))
    for i, evaluator in enumerate(evaluators):
        ann = evaluator.get("ann_file") if isinstance(evaluator, Mapping) else None
        ann = os.fspath(ann) if isinstance(ann, os.PathLike) else ann
        if not (isinstance(ann, str) and ann.endswith(".json") and "://" not in ann):
            continue
        key = f"{split}_evaluator" + (f"[{i}]" if len(evaluators) > 1 else "") + ".ann_file"
        if not os.path.isfile(ann):
            raise FileNotFoundError(f"{key}: {ann} does not exist. The metric reads the "
                                    "annotations from there: point it at the evaluation set's "
                                    f"file, e.g. --cfg-options {key}=PATH")
        if os.path.abspath(ann) != checked:  # format_only: a test-dev image list, no labels
            check_annotation_file(ann, meta.get("classes"),
                                  need_annotations=not evaluator.get("format_only", False))


def trainer_settings(cfg: Config) -> dict[str, Any]:
    """Trainer arguments that the config decides: run length, validation interval, logging
    interval, gradient accumulation. Command-line Trainer flags may override them."""
    train_cfg = cfg.get("train_cfg") or {}
    # mmengine's Runner takes by_epoch=False (no type) as an iteration-based loop.
    loop = train_cfg.get("type") or ("EpochBasedTrainLoop" if train_cfg.get("by_epoch", True)
                                      else "IterBasedTrainLoop")
    out: dict[str, Any] = {}
    if loop == "EpochBasedTrainLoop":
        out.update(max_epochs=train_cfg.get("max_epochs", 1),
                   check_val_every_n_epoch=train_cfg.get("val_interval", 1))
    elif loop == "IterBasedTrainLoop":
        out.update(max_steps=train_cfg.get("max_iters"), max_epochs=-1,
                   val_check_interval=train_cfg.get("val_interval", 1000),
                   check_val_every_n_epoch=None)
    else:
        raise ValueError(f"train_cfg type {loop!r} is not supported; use EpochBasedTrainLoop or "
                         "IterBasedTrainLoop")
    logger_hook = (cfg.get("default_hooks") or {}).get("logger") or {}
    if "interval" in logger_hook:  # how often mmengine's LoggerHook would log
        out["log_every_n_steps"] = logger_hook["interval"]
    accumulate = (cfg.get("optim_wrapper") or {}).get("accumulative_counts", 1)
    if accumulate != 1:
        out["accumulate_grad_batches"] = accumulate
    return out


class MMModelModule(CheckedStateLoading, L.LightningModule):
    """Training, validation and test loop of any MM model built from ``config.model``.

    Args:
        config: the MM config (file, plain dict or ``Config``); see :func:`load_config`.
        dataset_meta: the evaluation dataset's ``metainfo`` (class names, palette), which the
            metrics and pictures need; :func:`build_task` passes it in. Saved with checkpoints.

    ``task_scope``: the registry scope of the task ('mmdet' or 'mmseg'); a config of the other
    task is refused. ``monitor``: the validation metric a task would select checkpoints by.

    Pretrained weights (``init_cfg``) are loaded by ``init_weights`` in ``setup('fit')``, unless
    the Trainer resumes (``trainer.ckpt_path`` set before ``fit``, as the training tool does):
    testing or predicting from a checkpoint needs no pretrained file.

    The config's ``compile`` (mmengine's key: ``True`` or a dict of ``torch.compile`` arguments)
    compiles the backbone in place, the part whose cost grows with resolution; the heads' Python
    (sampling, assignment) stays eager, and parameter names (checkpoints) do not change.
    """

    task_scope = "mmdet"
    monitor = ""

    def __init__(self, config: str | os.PathLike | Mapping | Config,
                 dataset_meta: Mapping | None = None):
        super().__init__()
        self.cfg = load_config(config)
        if self.cfg.default_scope != self.task_scope:
            raise ValueError(f"{type(self).__name__} needs a {self.task_scope} config, got one "
                             f"with default_scope={self.cfg.default_scope!r} (the other task's "
                             "tool or checkpoint?)")
        self.dataset_meta = dict(dataset_meta) if dataset_meta is not None else None
        self.model = MODELS.build(self.cfg.model)
        compile_cfg = self.cfg.get("compile")
        if compile_cfg:
            self.model.backbone.compile(**({} if compile_cfg is True else dict(compile_cfg)))
        self._evaluators: dict[str, Evaluator] = {}
        self._initialised = False
        # What rebuilds this module from a checkpoint alone (load_from_checkpoint).
        self.save_hyperparameters({"config": self.cfg.to_dict(), "dataset_meta": self.dataset_meta})

    def setup(self, stage: str) -> None:
        # Once: a second fit on the same module continues from its weights.
        if stage == "fit" and not self._initialised:
            self._initialised = True
            if self.trainer.ckpt_path is None:
                self.model.init_weights()  # the heads' init, pretrained backbone files

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Before its weights are loaded: another task's checkpoint is named as such, not as a
        # list of missing keys.
        check_checkpoint_task(checkpoint, SCOPE_TASKS[self.task_scope],
                              checkpoint_source(trainer=self._trainer))
        self._initialised = True  # a checkpoint's weights: no init_weights over them later

    # ---- data ---------------------------------------------------------------------------

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # MM batches hold data samples Lightning cannot move; the model's data_preprocessor
        # moves (and normalises, pads) them itself.
        return batch

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = "tensor"):
        return self.model(inputs, data_samples, mode=mode)

    # ---- training -------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        data = self.model.data_preprocessor(batch, True)
        losses = self.model(**data, mode="loss")
        loss, log_vars = self.model.parse_losses(losses)
        n = len(data["inputs"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in log_vars.items() if k != "loss"},
                      batch_size=n)
        return loss

    def configure_optimizers(self) -> tuple[list, list[dict]]:
        optim_cfg = copy.deepcopy(self.cfg.optim_wrapper)
        # Precision comes from the Trainer (--trainer.precision), accumulation from
        # trainer_settings.
        optim_cfg["type"] = "OptimWrapper"
        for key in ("loss_scale", "dtype", "accumulative_counts"):
            optim_cfg.pop(key, None)
        auto = self.cfg.get("auto_scale_lr") or {}
        per_process = (self.cfg.get("train_dataloader") or {}).get("batch_size", 1)
        optim_cfg.optimizer.lr = scale_lr(
            optim_cfg.optimizer.lr, auto.get("base_batch_size"),
            total_batch_size(self.trainer, per_process), enable=auto.get("enable", False),
            how_to_enable="--auto-scale-lr")
        optimizer = build_optim_wrapper(self.model, optim_cfg).optimizer
        # Lightning steps them (lr_scheduler_step), after the optimizer step and before any
        # callback sees the batch end, and saves and restores their state with checkpoints.
        schedulers = [{"scheduler": s, "interval": "epoch" if s.by_epoch else "step"}
                      for s in self._build_schedulers(optimizer)]
        return [optimizer], schedulers

    def _build_schedulers(self, optimizer) -> list:
        cfgs = self.cfg.get("param_scheduler") or []
        cfgs = [cfgs] if isinstance(cfgs, dict) else list(cfgs)
        default_args: dict[str, Any] = dict(optimizer=optimizer)
        if any(c.get("convert_to_iter_based") for c in cfgs):
            default_args["epoch_length"] = self._steps_per_epoch()
        train_cfg = self.cfg.get("train_cfg") or {}
        out = []
        for c in cfgs:
            c = copy.deepcopy(c)
            by_epoch = c.get("by_epoch", True)
            default_end = train_cfg.get("max_epochs") if by_epoch else train_cfg.get("max_iters")
            if default_end is not None:
                c.setdefault("end", default_end)
            out.append(PARAM_SCHEDULERS.build(c, default_args=dict(default_args)))
        return out

    def _steps_per_epoch(self) -> int:
        """Optimizer steps per epoch as the Trainer will run them (distributed sampler,
        ``limit_train_batches`` and accumulation included), for epoch-to-iteration schedules."""
        total = self.trainer.estimated_stepping_batches  # sizes the train loader
        epochs = self.trainer.max_epochs
        if not epochs or epochs < 0 or not math.isfinite(total):
            raise ValueError("convert_to_iter_based schedules need an epoch-based run with a "
                             "finite train loader (train_cfg type EpochBasedTrainLoop)")
        return max(1, int(total) // epochs)

    def lr_scheduler_step(self, scheduler, metric=None) -> None:
        scheduler.step()  # mmengine's schedulers take no epoch or metric argument

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        opt = self.optimizers(use_pl_optimizer=False)
        self.log("train/lr", opt.param_groups[0]["lr"], prog_bar=True, batch_size=1)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        clip = dict((self.cfg.optim_wrapper or {}).get("clip_grad") or {})
        if clip:  # the config's clip_grad, e.g. dict(max_norm=35, norm_type=2), as mmengine's
            params = [p for g in optimizer.param_groups for p in g["params"]]
            if clip.pop("type", "norm") == "value":
                torch.nn.utils.clip_grad_value_(params, **clip)
            else:
                torch.nn.utils.clip_grad_norm_(params, **clip)
        elif gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- evaluation -------------------------------------------------------------------------

    def _loop_dataset(self, split: str):
        loaders = self.trainer.val_dataloaders if split == "val" else self.trainer.test_dataloaders
        return loaders.dataset

    def _evaluator(self, split: str) -> Evaluator:
        if split not in self._evaluators:
            cfg = self.cfg.get(f"{split}_evaluator")
            if cfg is None:
                raise ValueError(f"the config has no {split}_evaluator")
            if self.dataset_meta is None:
                raise ValueError(f"{type(self).__name__} was built without dataset_meta, which "
                                 "its metrics need: build it with build_task(config), or pass "
                                 "dataset_meta=MMDataModule(config).dataset_meta('val')")
            evaluator = Evaluator(copy.deepcopy(cfg))
            evaluator.dataset_meta = self.dataset_meta
            self._evaluators[split] = evaluator
        return self._evaluators[split]

    def _eval_step(self, split: str, batch: dict) -> None:
        data = self.model.data_preprocessor(batch, False)
        outputs = self.model(**data, mode="predict")
        self._evaluator(split).process(data_samples=outputs, data_batch=batch)

    def _eval_end(self, split: str) -> dict[str, float]:
        evaluator = self._evaluator(split)
        if self.trainer.sanity_checking:  # a few batches only: not a metric worth computing
            for metric in evaluator.metrics:
                metric.results.clear()
            return {}
        # The size of the dataset the loop ran, which mmengine needs to drop the samples that
        # distributed samplers repeat.
        metrics = evaluator.evaluate(len(self._loop_dataset(split)))
        # Every rank gets the same (broadcast) values from mmengine, so no further sync.
        # numbers.Real, not int | float: mmseg's IoUMetric returns numpy float32 scalars.
        self.log_dict({k: float(v) for k, v in metrics.items()
                       if isinstance(v, numbers.Real)}, prog_bar=False, rank_zero_only=False)
        return metrics

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def predict_step(self, batch: dict, batch_idx: int = 0, dataloader_idx: int = 0) -> list:
        """Predict a collated batch (as the config's test loader gives it): mmdet
        ``DetDataSample``s with ``pred_instances``, or mmseg ``SegDataSample``s with
        ``seg_logits`` and ``pred_sem_seg``, at each image's original size (segmentation: in
        the current test mode)."""
        data = self.model.data_preprocessor(batch, False)
        return self.model(**data, mode="predict")


def _groups_by_aspect_ratio(split: str, batch_sampler: Mapping | None) -> bool:
    """Whether the ``{split}_dataloader``'s ``batch_sampler`` asks for aspect-ratio grouping;
    other batch samplers are refused rather than silently replaced by plain batches."""
    if not batch_sampler:
        return False
    kind = batch_sampler.get("type") if isinstance(batch_sampler, Mapping) else batch_sampler
    name = kind if isinstance(kind, str) else getattr(kind, "__name__", repr(kind))
    if name.split(".")[-1] != "AspectRatioBatchSampler":
        raise ValueError(f"{split}_dataloader.batch_sampler: {name!r} is not supported here; "
                         "use dict(type='AspectRatioBatchSampler') (batches of one orientation) "
                         "or None (plain batches)")
    if split != "train":
        # Evaluation collects results in the distributed sampler's order, which regrouping
        # would break; mmdet's configs group training batches only.
        raise ValueError(f"{split}_dataloader.batch_sampler: aspect-ratio grouping is for "
                         f"training only; set {split}_dataloader.batch_sampler=None")
    return True


class MMDataModule(L.LightningDataModule):
    """Datasets and loaders from ``{train,val,test}_dataloader`` of an MM config.

    The config's ``sampler`` only decides shuffling: Lightning puts in distributed samplers
    under DDP, so multi-GPU and multi-node runs need Trainer flags only. The training loader's
    ``batch_sampler=dict(type='AspectRatioBatchSampler')`` (mmdet's default, set in
    ``configs/_base_/datasets/coco_instance.py``) groups batches by orientation with
    :class:`~lightning_modules.aspect_ratio.AspectRatioBatches`, into which Lightning puts its
    distributed sampler; ``batch_sampler=None`` or no key gives plain batches.
    """

    def __init__(self, config: str | os.PathLike | Mapping | Config):
        super().__init__()
        self.cfg = load_config(config)
        self._datasets: dict[str, Any] = {}

    def dataset_meta(self, split: str = "val") -> dict:
        """The ``metainfo`` (class names, palette) of ``split``'s dataset, or of the first of
        val / test / train that the config has, which the model's metrics and pictures need."""
        order = [split] + [s for s in ("val", "test", "train") if s != split]
        for name in order:
            if self.cfg.get(f"{name}_dataloader"):
                return dict(self.dataset(name).metainfo)
        raise ValueError("the config has no train_dataloader, val_dataloader or "
                         "test_dataloader to take the class names from")

    def dataset(self, split: str):
        if split not in self._datasets:
            loader_cfg = self.cfg.get(f"{split}_dataloader")
            if loader_cfg is None:
                raise ValueError(f"the config has no {split}_dataloader")
            # Bad samples: named errors; skip_bad_samples=True (config key) skips bad training
            # samples instead (lightning_modules/data_checks.py).
            skip = split == "train" and bool(self.cfg.get("skip_bad_samples", False))
            check_data_paths(split, loader_cfg["dataset"])  # named by config key
            try:
                self._datasets[split] = build_checked_dataset(
                    loader_cfg["dataset"], skip, training=split == "train",
                    max_image_pixels=self.cfg.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
                    ignore_index=_ignore_index(self.cfg))
            except FileNotFoundError as e:  # mm's own message names the path, not the fix
                root = loader_cfg["dataset"].get("data_root")
                raise FileNotFoundError(
                    f"the {split} data of the config is missing ({e}). Put the dataset under "
                    f"data_root={root!r} or point the config at it: --cfg-options "
                    f"{split}_dataloader.dataset.data_root=PATH (demo configs: run "
                    "tools/make_demo_data.py first)") from e
            if len(self._datasets[split]) == 0:
                ds = loader_cfg["dataset"]
                raise ValueError(f"the {split} dataset of the config is empty: no images under "
                                 f"data_root={ds.get('data_root')!r}, ann_file="
                                 f"{ds.get('ann_file')!r}, data_prefix={ds.get('data_prefix')!r} "
                                 f"(or all were bad and skipped); check "
                                 f"{split}_dataloader.dataset")
        return self._datasets[split]

    def _loader(self, split: str) -> DataLoader:
        loader_cfg = ConfigDict(self.cfg[f"{split}_dataloader"])
        sampler = loader_cfg.get("sampler") or {}
        collate_cfg = loader_cfg.get("collate_fn", dict(type="pseudo_collate"))
        collate = FUNCTIONS.get(collate_cfg["type"])
        if collate is None:
            raise ValueError(f"unknown collate_fn {collate_cfg['type']!r}")
        kwargs = {k: v for k, v in collate_cfg.items() if k != "type"}
        workers = loader_cfg.get("num_workers", 0)
        dataset = self.dataset(split)
        shuffle = split == "train" and sampler.get("shuffle", True)
        batch_size, drop_last = loader_cfg.get("batch_size", 1), loader_cfg.get("drop_last", False)
        batching: dict[str, Any] = dict(batch_size=batch_size, shuffle=shuffle,
                                        drop_last=drop_last)
        if _groups_by_aspect_ratio(split, loader_cfg.get("batch_sampler")):
            # Made here, inside the loader hook: Lightning records the arguments and, under DDP,
            # re-instantiates it with its DistributedSampler as `sampler`.
            order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            batching = dict(batch_sampler=AspectRatioBatches(order, batch_size, drop_last,
                                                             dataset=dataset))
        return DataLoader(
            dataset, **batching,
            num_workers=workers, persistent_workers=workers > 0 and loader_cfg.get(
                "persistent_workers", False),
            pin_memory=loader_cfg.get("pin_memory", False),
            collate_fn=functools.partial(collate, **kwargs) if kwargs else collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
