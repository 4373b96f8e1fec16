"""Command lines shared by tools/train_{det,seg}.py and tools/test_{det,seg}.py.

The MM config decides the experiment; the options follow MMDetection's tools (``CONFIG``,
``--work-dir``, ``--resume``, ``--cfg-options``, ``--auto-scale-lr``), and the Trainer flags are
Lightning's, spelt as in the classification CLI (``tools/train_cls.py``): ``--trainer.NAME
VALUE`` for any argument of ``lightning.Trainer``, parsed and type-checked from its signature.
They only choose where and how the run happens, e.g.
``--trainer.devices 8 --trainer.strategy ddp --trainer.precision bf16-mixed``; length flags
(``--trainer.max_epochs``, ``--trainer.max_steps``) override the config's ``train_cfg``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from mmengine.config import Config, DictAction

from . import compat
from .callbacks import NonFiniteLoss, use_safe_checkpoint_io
from .checkpoint_checks import (
    SCOPE_TASKS,
    check_checkpoint_file,
    check_checkpoint_file_task,
    check_pretrained_files,
    resume_checkpoint,
)
from .mm_bridge import MMModelModule, build_task, load_config, trainer_settings

__all__ = ["test_main", "train_main", "train_parser", "test_parser"]

# Trainer arguments the tools set themselves (work dir, loggers, checkpoints).
_TOOL_OWNED = {"default_root_dir", "logger", "callbacks", "enable_checkpointing"}
_TRAINER_FLAGS_HELP = ("Trainer flags: --trainer.NAME VALUE for any argument of lightning.Trainer "
                       "(e.g. --trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp "
                       "--trainer.precision bf16-mixed --trainer.max_epochs 1), as in "
                       "tools/train_cls.py")


def parse_trainer_flags(flags: list[str]) -> dict[str, Any]:
    """``--trainer.NAME VALUE`` flags -> Trainer keyword arguments, only those given, typed and
    checked against ``lightning.Trainer``'s signature (jsonargparse, as LightningCLI does)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="--trainer.*", usage=_TRAINER_FLAGS_HELP)
    parser.add_class_arguments(L.Trainer, "trainer", skip=_TOOL_OWNED, fail_untyped=False,
                               instantiate=False, sub_configs=True)
    ns = parser.parse_args(flags, defaults=False)
    return ns.get("trainer").as_dict() if ns.get("trainer") else {}


def _split_trainer_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the tool's own arguments, the ``--trainer.NAME [VALUE]`` flags), in their order."""
    own: list[str] = []
    flags: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--trainer."):
            flags.append(arg)
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                flags.append(argv[i + 1])
                i += 1
        else:
            own.append(arg)
        i += 1
    return own, flags


def _parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    own, flags = _split_trainer_flags(sys.argv[1:] if argv is None else list(argv))
    args = ap.parse_args(own)
    args.trainer = parse_trainer_flags(flags)
    return args


def _common(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                    help="override config keys, e.g. train_dataloader.batch_size=4")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the backbone (the config's compile=True; the first "
                         "steps are slow while it compiles)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def train_parser(task: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=f"Train a {task} model from an MM config.",
                                 epilog=_TRAINER_FLAGS_HELP)
    ap.add_argument("config", help="MM config file")
    ap.add_argument("--work-dir", help="logs and checkpoints (default: work_dirs/CONFIG_NAME)")
    ap.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                    help="resume from CKPT, or from WORK_DIR/checkpoints/last.ckpt if no CKPT")
    ap.add_argument("--auto-scale-lr", action="store_true",
                    help="scale the config's lr linearly from auto_scale_lr.base_batch_size to "
                         "the actual total batch (processes x batch_size x accumulation)")
    return _common(ap)


def test_parser(task: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=f"Evaluate a {task} checkpoint on the config's "
                                             "test set and print the metrics.",
                                 epilog=_TRAINER_FLAGS_HELP)
    ap.add_argument("config", help="MM config file")
    ap.add_argument("checkpoint", help="checkpoint written by the training tool")
    return _common(ap)


def _config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config, args.cfg_options)
    if args.compile:
        cfg.compile = cfg.get("compile") or True
    return cfg


def train_main(module_cls: type[MMModelModule], argv: list[str] | None = None) -> L.Trainer:
    """Build the module and data from the config and fit; returns the Trainer."""
    compat.install()
    args = _parse(train_parser(module_cls.__name__), argv)
    cfg = _config(args)
    if args.auto_scale_lr:
        if not (cfg.get("auto_scale_lr") or {}).get("base_batch_size"):
            raise ValueError(f"--auto-scale-lr: {args.config} has no "
                             "auto_scale_lr.base_batch_size (the total batch its lr is for)")
        cfg.auto_scale_lr.enable = True
    work_dir = Path(args.work_dir or cfg.get("work_dir") or
                    Path("work_dirs") / Path(args.config).stem)
    # Everything that can be checked before training is, before the model is built: the
    # checkpoint to resume from (or the pretrained files), the config's keys, the training and
    # validation data. Nothing in the work dir is written before these pass.
    ckpt_path = resume_checkpoint(args.resume, work_dir)
    if ckpt_path is None:
        check_pretrained_files(cfg)
    else:
        check_checkpoint_file_task(ckpt_path, SCOPE_TASKS[module_cls.task_scope])
    L.seed_everything(args.seed, workers=True)
    module, data = build_task(cfg, module_cls=module_cls, train=True)
    settings = trainer_settings(cfg)
    by_iter = "max_steps" in settings and settings.get("check_val_every_n_epoch") is None
    checkpoints = ModelCheckpoint(
        dirpath=work_dir / "checkpoints", save_last=True, save_top_k=-1,
        filename="iter_{step}" if by_iter else "epoch_{epoch}", auto_insert_metric_name=False,
        every_n_train_steps=settings.get("val_check_interval") if by_iter else None)
    trainer = L.Trainer(
        **{**settings, **args.trainer},
        default_root_dir=work_dir,
        logger=[TensorBoardLogger(work_dir, name="tensorboard"), CSVLogger(work_dir, name="csv")],
        # The module logs train/lr itself (one group per parameter). A NaN / inf loss stops the
        # run, or skips the step with the config's nonfinite_loss='skip'.
        callbacks=[checkpoints, NonFiniteLoss.from_config(cfg.get("nonfinite_loss"))],
    )
    use_safe_checkpoint_io(trainer)  # atomic checkpoint files, weights_only=True on resume
    work_dir.mkdir(parents=True, exist_ok=True)
    cfg.dump(str(work_dir / Path(args.config).name))
    # Lightning's stateful resume: known before setup('fit'), which then skips the pretrained
    # files (the checkpoint replaces those weights).
    trainer.ckpt_path = ckpt_path
    trainer.fit(module, datamodule=data)
    return trainer


def test_main(module_cls: type[MMModelModule], argv: list[str] | None = None) -> dict:
    """Evaluate a training checkpoint on the config's test data; prints and returns metrics."""
    compat.install()
    args = _parse(test_parser(module_cls.__name__), argv)
    # Before the data and the model are built: a readable checkpoint of this task.
    check_checkpoint_file(args.checkpoint)
    check_checkpoint_file_task(args.checkpoint, SCOPE_TASKS[module_cls.task_scope])
    cfg = _config(args)
    L.seed_everything(args.seed, workers=True)
    module, data = build_task(cfg, module_cls=module_cls, eval_split="test")
    trainer = L.Trainer(**args.trainer, logger=False, enable_checkpointing=False)
    use_safe_checkpoint_io(trainer)
    results = trainer.test(module, datamodule=data, ckpt_path=os.fspath(args.checkpoint))
    metrics = results[0] if results else {}
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}")
    return metrics
