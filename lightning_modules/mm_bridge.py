"""An MM config as a LightningModule + LightningDataModule, shared by detection and segmentation.

The config is the single source of truth: ``model`` (with its ``data_preprocessor``),
``train_dataloader`` / ``val_dataloader`` / ``test_dataloader``, ``val_evaluator`` /
``test_evaluator``, ``optim_wrapper`` (optimizer, ``paramwise_cfg``, ``clip_grad``,
``accumulative_counts``), ``param_scheduler`` and ``train_cfg`` (length, validation interval).
Trainer flags only choose where and how the run happens.

Mirrors mmengine's Runner where it matters for results: the optimizer comes from
``build_optim_wrapper``; schedulers are built with ``epoch_length`` = batches per epoch and default
``end`` from ``train_cfg``, stepped after every iteration (``by_epoch=False``) or epoch, as
``ParamSchedulerHook`` does; the evaluator sees every validation sample once (mmengine's
``collect_results`` undoes the interleaving and padding of distributed samplers).
"""

from __future__ import annotations

import copy
import functools
import numbers
import os
from typing import Any

import lightning as L
import torch
from mmengine.config import Config, ConfigDict
from mmengine.evaluator import Evaluator
from mmengine.optim import build_optim_wrapper
from mmengine.registry import (
    FUNCTIONS,
    MODELS,
    PARAM_SCHEDULERS,
    init_default_scope,
)
from torch.utils.data import DataLoader

from . import compat
from .callbacks import check_resumed_checkpoint
from .data_checks import build_checked_dataset
from .distributed import scale_lr, total_batch_size

compat.install()

__all__ = ["MMDataModule", "MMModelModule", "load_config", "trainer_settings"]


def load_config(config: str | os.PathLike | Config, cfg_options: dict | None = None) -> Config:
    """Read an MM config (``_base_`` inheritance, ``custom_imports``) and apply overrides."""
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        if not os.path.isfile(config):
            raise FileNotFoundError(f"config file not found: {config}")
        cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def trainer_settings(cfg: Config) -> dict[str, Any]:
    """Trainer arguments that the config decides: run length, validation interval, logging
    interval, gradient accumulation. Command-line Trainer flags may override them."""
    train_cfg = cfg.get("train_cfg") or {}
    loop = train_cfg.get("type", "EpochBasedTrainLoop")
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


def _registry_scope(cfg: Config, default: str) -> str:
    scope = cfg.get("default_scope", default)
    init_default_scope(scope)
    return scope


class MMModelModule(L.LightningModule):
    """Training, validation and test loop of any MM model built from ``cfg.model``.

    ``default_scope``: the registry scope when the config names none ('mmdet' or 'mmseg').
    ``monitor``: the validation metric a task would select checkpoints by.

    The config's ``compile`` (mmengine's key: ``True`` or a dict of ``torch.compile`` arguments)
    compiles the backbone in place, the part whose cost grows with resolution; the heads' Python
    (sampling, assignment) stays eager, and parameter names (checkpoints) do not change.
    """

    default_scope = "mmdet"
    monitor = ""

    def __init__(self, config: str | os.PathLike | Config, cfg_options: dict | None = None):
        super().__init__()
        self.cfg = load_config(config, cfg_options)
        self.scope = _registry_scope(self.cfg, self.default_scope)
        self.model = MODELS.build(self.cfg.model)
        self.model.init_weights()
        compile_cfg = self.cfg.get("compile")
        if compile_cfg:
            self.model.backbone.compile(**({} if compile_cfg is True else dict(compile_cfg)))
        self._evaluators: dict[str, Evaluator] = {}
        self._schedulers: list = []
        self._scheduler_states: list[dict] | None = None
        # Saved with checkpoints so that a run can be inspected or rebuilt from them alone.
        self.save_hyperparameters({"config": self.cfg.pretty_text})

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

    def configure_optimizers(self):
        optim_cfg = copy.deepcopy(self.cfg.optim_wrapper)
        # Precision comes from the Trainer (--precision), accumulation from trainer_settings.
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
        self._schedulers = self._build_schedulers(optimizer)
        if self._scheduler_states is not None:  # resuming: see on_load_checkpoint
            for sched, state in zip(self._schedulers, self._scheduler_states, strict=True):
                sched.load_state_dict(state)
            self._scheduler_states = None
        return optimizer

    def _build_schedulers(self, optimizer) -> list:
        cfgs = self.cfg.get("param_scheduler") or []
        cfgs = [cfgs] if isinstance(cfgs, dict) else list(cfgs)
        if not cfgs:
            return []
        # Batches per epoch as the Trainer will run them (after any distributed sampler and
        # limit_train_batches); the fit loop loads the train data here if it has not yet.
        self.trainer.fit_loop.setup_data()
        epoch_length = self.trainer.num_training_batches
        if not 0 < epoch_length < float("inf"):
            raise ValueError(f"cannot schedule by epoch: the train loader has {epoch_length} "
                             "batches per epoch")
        epoch_length = int(epoch_length)
        train_cfg = self.cfg.get("train_cfg") or {}
        out = []
        for c in cfgs:
            c = copy.deepcopy(c)
            by_epoch = c.get("by_epoch", True)
            default_end = train_cfg.get("max_epochs") if by_epoch else train_cfg.get("max_iters")
            if default_end is not None:
                c.setdefault("end", default_end)
            out.append(PARAM_SCHEDULERS.build(
                c, default_args=dict(optimizer=optimizer, epoch_length=epoch_length)))
        return out

    def configure_callbacks(self) -> list[L.Callback]:
        return [_StepMMSchedulers()]

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        opt = self.optimizers(use_pl_optimizer=False)
        self.log("train/lr", opt.param_groups[0]["lr"], prog_bar=True, batch_size=1)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        clip = (self.cfg.optim_wrapper or {}).get("clip_grad")
        if clip:  # the config's clip_grad, e.g. dict(max_norm=35, norm_type=2)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, **clip)
        elif gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mm_param_schedulers"] = [s.state_dict() for s in self._schedulers]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_resumed_checkpoint(self, checkpoint)  # another config's checkpoint: one message
        # Called before configure_optimizers on resume; applied once schedulers exist.
        self._scheduler_states = checkpoint.get("mm_param_schedulers")

    # ---- evaluation -------------------------------------------------------------------------

    def _evaluator(self, split: str) -> Evaluator:
        if split not in self._evaluators:
            cfg = self.cfg.get(f"{split}_evaluator")
            if cfg is None:
                raise ValueError(f"the config has no {split}_evaluator")
            evaluator = Evaluator(copy.deepcopy(cfg))
            evaluator.dataset_meta = self.trainer.datamodule.dataset(split).metainfo
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
        metrics = evaluator.evaluate(len(self.trainer.datamodule.dataset(split)))
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


class _StepMMSchedulers(L.Callback):
    """Steps the module's MM schedulers after every batch (``by_epoch=False``) and after the
    last batch of an epoch (``by_epoch=True``), as mmengine's ParamSchedulerHook does. A
    callback, not module hooks: Lightning runs callbacks' ``on_train_batch_end`` before the
    module's and ``ModelCheckpoint`` last, and validates (and checkpoints) at the end of an
    epoch before ``on_train_epoch_end``; stepped there, a checkpoint would hold the schedule one
    step or epoch behind the weights, and a resumed run would lag by that much."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        end_of_epoch = batch_idx + 1 == trainer.num_training_batches
        for sched in pl_module._schedulers:
            if not sched.by_epoch or end_of_epoch:
                sched.step()


class MMDataModule(L.LightningDataModule):
    """Datasets and loaders from ``{train,val,test}_dataloader`` of an MM config.

    The config's ``sampler`` only decides shuffling: Lightning puts in distributed samplers
    under DDP, so multi-GPU and multi-node runs need Trainer flags only. mmdet's
    ``AspectRatioBatchSampler`` is not used (plain batches of the configured size).
    """

    def __init__(self, config: str | os.PathLike | Config, cfg_options: dict | None = None,
                 default_scope: str = "mmdet"):
        super().__init__()
        self.cfg = load_config(config, cfg_options)
        self.default_scope = default_scope
        self._datasets: dict[str, Any] = {}

    def dataset(self, split: str):
        if split not in self._datasets:
            _registry_scope(self.cfg, self.default_scope)
            loader_cfg = self.cfg.get(f"{split}_dataloader")
            if loader_cfg is None:
                raise ValueError(f"the config has no {split}_dataloader")
            # Bad samples: named errors; skip_bad_samples=True (config key) skips bad training
            # samples instead (lightning_modules/data_checks.py).
            skip = split == "train" and bool(self.cfg.get("skip_bad_samples", False))
            try:
                self._datasets[split] = build_checked_dataset(loader_cfg["dataset"], skip,
                                                              training=split == "train")
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
        _registry_scope(self.cfg, self.default_scope)
        collate = FUNCTIONS.get(collate_cfg["type"])
        if collate is None:
            raise ValueError(f"unknown collate_fn {collate_cfg['type']!r}")
        kwargs = {k: v for k, v in collate_cfg.items() if k != "type"}
        workers = loader_cfg.get("num_workers", 0)
        return DataLoader(
            self.dataset(split), batch_size=loader_cfg.get("batch_size", 1),
            shuffle=split == "train" and sampler.get("shuffle", True),
            num_workers=workers, persistent_workers=workers > 0 and loader_cfg.get(
                "persistent_workers", False),
            pin_memory=loader_cfg.get("pin_memory", False),
            drop_last=loader_cfg.get("drop_last", False),
            collate_fn=functools.partial(collate, **kwargs) if kwargs else collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
