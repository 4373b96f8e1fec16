"""Command lines shared by tools/train_{det,seg}.py and tools/test_{det,seg}.py.

The MM config decides the experiment; these flags only choose where and how it runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from mmengine.config import DictAction

from backbones._helpers import read_checkpoint

from .callbacks import NonFiniteLoss, use_safe_checkpoint_io
from .mm_bridge import MMDataModule, MMModelModule, load_config, trainer_settings


def _devices(value: str):
    """'auto', '2' (count) or '0,1' (indices), as Lightning takes them."""
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value)


def _add_trainer_flags(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("Lightning Trainer (where and how the run happens)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu, auto ...")
    g.add_argument("--devices", type=_devices, default="auto", help="count, list or auto")
    g.add_argument("--num-nodes", type=int, default=1)
    g.add_argument("--strategy", default="auto", help="auto, ddp, fsdp ...")
    g.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed")
    g.add_argument("--max-epochs", type=int, help="override the config's train_cfg length")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--limit-val-batches", type=float, help="for quick checks")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone (the config's compile=True; the first "
                        "steps are slow while it compiles)")


def _trainer_kwargs(args: argparse.Namespace) -> dict:
    kw = dict(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
              strategy=args.strategy, precision=args.precision)
    if args.max_epochs is not None:
        kw["max_epochs"] = args.max_epochs
    if args.max_steps is not None:
        kw["max_steps"] = args.max_steps
    if args.limit_val_batches is not None:
        kw["limit_val_batches"] = args.limit_val_batches
    return kw


def _load_config(args: argparse.Namespace):
    cfg = load_config(args.config, args.cfg_options)
    if args.compile:
        cfg.compile = cfg.get("compile") or True
    return cfg


def train_parser(task: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=f"Train a {task} model from an MM config.")
    ap.add_argument("config", help="MM config file")
    ap.add_argument("--work-dir", help="logs and checkpoints (default: work_dirs/CONFIG_NAME)")
    ap.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                    help="resume from CKPT, or from WORK_DIR/checkpoints/last.ckpt if no CKPT")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                    help="override config keys, e.g. train_dataloader.batch_size=4")
    ap.add_argument("--auto-scale-lr", action="store_true",
                    help="scale the config's lr linearly from auto_scale_lr.base_batch_size to "
                         "the actual total batch (processes x batch_size x accumulation)")
    _add_trainer_flags(ap)
    return ap


def _resume_path(resume: str | None, work_dir: Path) -> str | None:
    if resume is None:
        return None
    path = work_dir / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {path}")
    return str(path)


def train_main(module_cls: type[MMModelModule], argv: list[str] | None = None):
    """Build the module and data from the config and fit; returns the Trainer."""
    args = train_parser(module_cls.__name__).parse_args(argv)
    cfg = _load_config(args)
    if args.auto_scale_lr:
        if not (cfg.get("auto_scale_lr") or {}).get("base_batch_size"):
            raise ValueError(f"--auto-scale-lr: {args.config} has no "
                             "auto_scale_lr.base_batch_size (the total batch its lr is for)")
        cfg.auto_scale_lr.enable = True
    work_dir = Path(args.work_dir or cfg.get("work_dir") or
                    Path("work_dirs") / Path(args.config).stem)
    ckpt_path = _resume_path(args.resume, work_dir)
    L.seed_everything(args.seed, workers=True)
    module = module_cls(cfg)
    data = MMDataModule(cfg, default_scope=module.scope)
    settings = trainer_settings(cfg)
    by_iter = "max_steps" in settings and settings.get("check_val_every_n_epoch") is None
    checkpoints = ModelCheckpoint(
        dirpath=work_dir / "checkpoints", save_last=True, save_top_k=-1,
        filename="iter_{step}" if by_iter else "epoch_{epoch}", auto_insert_metric_name=False,
        every_n_train_steps=settings.get("val_check_interval") if by_iter else None)
    trainer = L.Trainer(
        **{**settings, **_trainer_kwargs(args)},
        default_root_dir=work_dir,
        logger=[TensorBoardLogger(work_dir, name="tensorboard"), CSVLogger(work_dir, name="csv")],
        # The module logs train/lr itself (one group per parameter). A NaN / inf loss stops the
        # run, or skips the step with the config's nonfinite_loss='skip'.
        callbacks=[checkpoints, NonFiniteLoss.from_config(cfg.get("nonfinite_loss"))],
    )
    use_safe_checkpoint_io(trainer)  # atomic checkpoint files, weights_only=True on resume
    work_dir.mkdir(parents=True, exist_ok=True)
    cfg.dump(str(work_dir / Path(args.config).name))
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def test_parser(task: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=f"Evaluate a {task} checkpoint on the config's "
                                             "test set and print the metrics.")
    ap.add_argument("config", help="MM config file")
    ap.add_argument("checkpoint", help="checkpoint written by the training tool")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    _add_trainer_flags(ap)
    return ap


def load_weights(module: MMModelModule, checkpoint: str | os.PathLike) -> None:
    """Load a training checkpoint's weights (safe unpickling), with a clear error on mismatch."""
    ckpt = read_checkpoint(checkpoint)
    state = ckpt.get("state_dict", ckpt)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"checkpoint {checkpoint} does not match the model of this config "
                           f"(another config or variant?): {e}") from e


def test_main(module_cls: type[MMModelModule], argv: list[str] | None = None) -> dict:
    args = test_parser(module_cls.__name__).parse_args(argv)
    cfg = _load_config(args)
    L.seed_everything(args.seed, workers=True)
    module = module_cls(cfg)
    load_weights(module, args.checkpoint)
    trainer = L.Trainer(**_trainer_kwargs(args), logger=False, enable_checkpointing=False)
    results = trainer.test(module, datamodule=MMDataModule(cfg, default_scope=module.scope))
    metrics = results[0] if results else {}
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}")
    return metrics
