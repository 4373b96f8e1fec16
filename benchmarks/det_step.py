"""The Lightning detection training step against mmengine's own Runner (``--mode det-step``).

Both train the same MM config on the same data for ``warmup + iters`` iterations, in this
process, one after the other, alternating over ``rounds`` (Runner, Lightning, Runner, ...) so that
a load change on a shared machine hits both. Identical for both, and only for the timing: an
iteration-based loop of that length (``IterBasedTrainLoop`` / ``max_steps``), no validation, no
checkpoints, no parameter schedulers (they change the learning rate, not the cost). The time of
an iteration is the interval between the ends of consecutive iterations (mmengine's
``after_train_iter``, Lightning's ``on_train_batch_end``): forward, backward, optimizer step and
the wait for the next batch, what mmengine's ``IterTimerHook`` calls ``time``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from lightning_modules.callbacks import NonFiniteLoss
from lightning_modules.detection import DetectionModule
from lightning_modules.mm_bridge import build_task, load_config, trainer_settings

__all__ = ["compare_det_step", "det_step_main", "time_lightning", "time_mmengine_runner"]


def _timing_config(cfg: Config, total_iters: int, work_dir: str) -> Config:
    cfg = copy.deepcopy(cfg)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=total_iters,
                         val_interval=10 ** 9)
    cfg.param_scheduler = []
    for key in ("val_dataloader", "val_cfg", "val_evaluator", "test_dataloader", "test_cfg",
                "test_evaluator"):
        cfg[key] = None
    hooks = dict(cfg.get("default_hooks") or {}, checkpoint=None)  # None: not registered
    hooks.pop("visualization", None)  # draws only in validation / test
    cfg.default_hooks = hooks
    # No files from the visualizer (a fresh name: mmengine keeps one instance per name).
    cfg.visualizer = dict(cfg.get("visualizer") or dict(type="Visualizer"), vis_backends=[],
                          name=f"det_step_{time.monotonic_ns()}")
    cfg.work_dir = work_dir
    cfg.log_level = "WARNING"
    return cfg


def _intervals(stamps: Sequence[float], warmup: int) -> list[float]:
    """Seconds per iteration after the first ``warmup`` iterations (stamps at iteration ends)."""
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:], strict=False)]


class _StampHook(Hook):
    priority = "VERY_LOW"  # after the optimizer step and the other hooks

    def __init__(self):
        self.stamps: list[float] = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.stamps.append(time.perf_counter())


class _StampCallback(L.Callback):
    def __init__(self):
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())


def time_mmengine_runner(cfg: Config, warmup: int, iters: int, seed: int = 0) -> list[float]:
    """Per-iteration seconds of mmengine's ``Runner.train()`` on the config."""
    from mmengine.runner import Runner

    with tempfile.TemporaryDirectory() as work_dir:
        run_cfg = _timing_config(cfg, warmup + iters + 1, work_dir)
        run_cfg.randomness = dict(seed=seed)
        runner = Runner.from_cfg(run_cfg)
        hook = _StampHook()
        runner.register_hook(hook)
        runner.train()
        # mmengine's Runner keeps a process-wide logger and visualizer instance per name.
        logging.getLogger("mmengine").handlers.clear()
    return _intervals(hook.stamps, warmup)


def time_lightning(cfg: Config, warmup: int, iters: int, seed: int = 0) -> list[float]:
    """Per-iteration seconds of this repo's Lightning detection training on the config."""
    run_cfg = _timing_config(cfg, warmup + iters + 1, tempfile.gettempdir())
    L.seed_everything(seed, workers=True, verbose=False)
    module, data = build_task(run_cfg, module_cls=DetectionModule)
    stamps = _StampCallback()
    settings = dict(trainer_settings(run_cfg), limit_val_batches=0, num_sanity_val_steps=0)
    trainer = L.Trainer(**settings, accelerator="cpu" if not torch.cuda.is_available() else
                        "auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[stamps, NonFiniteLoss.from_config(cfg.get("nonfinite_loss"))])
    trainer.fit(module, datamodule=data)
    return _intervals(stamps.stamps, warmup)


def compare_det_step(config: str | Config, iters: int = 20, warmup: int = 5, rounds: int = 2,
                     cfg_options: dict | None = None, log=print) -> dict[str, Any]:
    """Median seconds per iteration of both, and their ratio (Lightning / Runner)."""
    cfg = load_config(config, cfg_options)
    times: dict[str, list[float]] = {"mmengine_runner": [], "lightning": []}
    for r in range(rounds):
        for name, fn in (("mmengine_runner", time_mmengine_runner),
                         ("lightning", time_lightning)):
            t = fn(cfg, warmup, iters)
            times[name] += t
            log(f"round {r + 1}: {name}: median {statistics.median(t):.3f} s/iter "
                f"over {len(t)} iterations")
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(kind="det_step", config=str(config), iters=iters, warmup=warmup, rounds=rounds,
                batch_size=cfg.train_dataloader.get("batch_size"),
                num_workers=cfg.train_dataloader.get("num_workers"),
                threads=torch.get_num_threads(),
                mmengine_runner_s_per_iter=med["mmengine_runner"],
                lightning_s_per_iter=med["lightning"],
                ratio_lightning_over_runner=med["lightning"] / med["mmengine_runner"],
                mmengine_runner_all_s=[round(t, 4) for t in times["mmengine_runner"]],
                lightning_all_s=[round(t, 4) for t in times["lightning"]])


def _cfg_options(items: Sequence[str]) -> dict:
    from mmengine.config import DictAction

    ns = argparse.Namespace()
    DictAction(option_strings=[], dest="opts")(None, ns, list(items))
    return ns.opts


def det_step_main(args: argparse.Namespace, argv: Sequence[str] | None = None
                  ) -> dict[str, Any]:
    """``tools/benchmark.py --mode det-step``: print the comparison, write it as JSON."""
    from .report import run_meta, write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    meta = run_meta(argv)
    rec = compare_det_step(args.config, args.iters, args.warmup_iters, args.rounds,
                           cfg_options=_cfg_options(args.cfg_options) if args.cfg_options
                           else None)
    rec["status"] = "ok"
    print(json.dumps({k: v for k, v in rec.items() if not k.endswith("_all_s")}, indent=1))
    if args.out:
        write_results(args.out, meta, [rec])
    return rec
