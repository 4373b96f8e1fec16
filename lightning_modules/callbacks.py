"""Reliability pieces shared by the training entry points (tools/train_{det,seg,cls}.py).

- ``SafeCheckpointIO``: checkpoints written atomically (temporary file in the target folder,
  fsync, rename), so that a kill at any moment leaves the previous file or the new one, never a
  truncated ``last.ckpt``; and loaded with ``weights_only=True`` (numpy values allowed) unless
  the user opts in. Lightning's own writer goes through a file in the system temp folder and
  ``shutil.move``, which copies, not renames, when that folder is on another filesystem.
- ``NonFiniteLoss``: a NaN / inf training loss stops the run naming the step, or (configured)
  skips that optimizer step.
- ``check_checkpoint_fits`` / ``CheckedStateLoading``: a resumed, evaluated or rebuilt checkpoint
  written for another config or variant fails with one clear message.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from fsspec.utils import get_protocol
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from backbones._helpers import safe_torch_load, trusted_checkpoints

from .checkpoint_checks import check_checkpoint_file

__all__ = ["CheckedStateLoading", "NonFiniteLoss", "SafeCheckpointIO", "check_checkpoint_fits",
           "partial_path", "use_safe_checkpoint_io"]

log = logging.getLogger(__name__)


def _is_local(path: str | os.PathLike) -> bool:
    return get_protocol(str(path)) in ("file", "local")


def partial_path(path: str | os.PathLike) -> Path:
    """Where ``path`` is written before the rename: the same folder (so that the rename is
    atomic), a hidden name that is not ``*.ckpt`` (so that Lightning's search for ``last*.ckpt``
    never picks a leftover), and always the same name (a leftover is overwritten next time)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk (POSIX).
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic local writes and safe loads; remote paths go through Lightning's own IO."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path(path)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: readers see the old file or the new one
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        _fsync_dir(path.parent)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = "cpu",
                        weights_only: bool | None = None) -> dict[str, Any]:
        trusted = weights_only is False  # the caller's explicit opt-in (e.g. --weights_only false)
        if not _is_local(path):
            return super().load_checkpoint(path, map_location,
                                           weights_only=not (trusted or trusted_checkpoints()))
        path = str(path).removeprefix("file://")
        check_checkpoint_file(path)  # missing, empty, truncated, not a checkpoint: named
        if trusted:
            log.info("loading %s with weights_only=False, as asked", path)
            return torch.load(path, map_location=map_location, weights_only=False)
        try:
            return safe_torch_load(path, map_location=map_location)
        except RuntimeError as e:  # a file cut short: torch names only the zip reader
            if "PytorchStreamReader" not in str(e):
                raise
            raise RuntimeError(f"checkpoint {path} is truncated or corrupt ({e}); resume from "
                               "another checkpoint of its folder") from e


def use_safe_checkpoint_io(trainer: L.Trainer) -> None:
    """Give ``trainer`` the ``SafeCheckpointIO`` unless it was configured with its own IO."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = SafeCheckpointIO()


class NonFiniteLoss(L.Callback):
    """Watches the training loss; on NaN / inf before an optimizer step:

    - ``action='stop'`` (default): raises ``FloatingPointError`` naming the step, before the
      weights are touched (the last checkpoint is the state to go back to);
    - ``action='skip'``: drops the step's gradients so the optimizer leaves the weights and its
      moments as they were, warns, and goes on. The step still counts (the schedule advances
      as planned). More than ``max_consecutive_skips`` skips in a row stop the run: it diverged.

    Under gradient accumulation a non-finite loss in any micro-batch spoils the step. The
    decision is taken on every process at once (DDP: any rank's bad loss skips or stops all).
    """

    def __init__(self, action: str = "stop", max_consecutive_skips: int = 20):
        if action not in ("stop", "skip"):
            raise ValueError(f"non-finite loss action must be 'stop' or 'skip', got {action!r}")
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_steps: list[int] = []
        self._bad: float | None = None
        self._consecutive = 0
        self._batch_idx = 0

    @classmethod
    def from_config(cls, value: str | Mapping | None) -> NonFiniteLoss:
        """From an MM config's ``nonfinite_loss`` key: ``'stop'`` / ``'skip'``, or a dict of
        this class's arguments; absent means 'stop'."""
        if value is None:
            return cls()
        return cls(value) if isinstance(value, str) else cls(**value)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if self._bad is None and not bool(torch.isfinite(loss.detach()).all()):
            self._bad = float(loss.detach().float().sum())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        value, self._bad = self._bad, None
        if not trainer.strategy.reduce_boolean_decision(value is not None, all=False):
            self._consecutive = 0
            return
        step = trainer.global_step + 1  # 1-based: the step that was about to be taken
        what = (f"non-finite training loss ({value})" if value is not None else
                "non-finite training loss on another process")
        where = (f"at step {step} (epoch {trainer.current_epoch}, batch {self._batch_idx}; "
                 f"{trainer.global_step} steps done)")
        if self.action == "stop":
            raise FloatingPointError(
                f"{what} {where}. The weights are those after step {trainer.global_step}. Lower "
                "the learning rate, lengthen the warm-up, clip gradients or check the data; to "
                "skip such steps instead: nonfinite_loss='skip' (MM configs) or "
                "--nonfinite_loss.action skip (classification)")
        self._consecutive += 1
        if self._consecutive > self.max_consecutive_skips:
            raise FloatingPointError(
                f"{what} {where}, {self._consecutive} steps in a row: the run has diverged. "
                "Lower the learning rate or resume from an earlier checkpoint")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # optimizers leave parameters without gradients untouched
        self.skipped_steps.append(step)
        rank_zero_warn(f"{what} {where}: step skipped, weights unchanged")


def check_checkpoint_fits(module: torch.nn.Module, checkpoint: Mapping, source: str) -> None:
    """Raise one clear error when ``checkpoint['state_dict']`` does not fit ``module`` (other
    keys or shapes: another config, variant or model_kwargs); names up to 5 of each kind."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        return
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape]
    parts = [f"{len(keys)} {kind} ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})"
             for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("shape mismatches, checkpoint vs model", shapes)) if keys]
    if parts:
        raise RuntimeError(f"{source} does not fit this model: {'; '.join(parts)}. It was written "
                           "for another config, variant or model_kwargs: use a checkpoint of this "
                           "config, or another work dir to start afresh")


class CheckedStateLoading:
    """LightningModule mixin: a strict ``load_state_dict`` (a Trainer restoring or testing a
    checkpoint, ``load_from_checkpoint``) of weights that do not fit fails with one message
    naming what differs (``check_checkpoint_fits``) instead of torch's list of every key.
    ``strict=False`` callers are left alone."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False):
        if strict:
            trainer = getattr(self, "_trainer", None)
            path = trainer.ckpt_path if trainer is not None else None
            source = f"checkpoint {path}" if path else "the checkpoint"
            check_checkpoint_fits(self, {"state_dict": state_dict}, source)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
