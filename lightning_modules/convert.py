"""Lightning checkpoints of this project -> the plain layouts other tools load.

- Detection / segmentation (``DetectionModule`` / ``SegmentationModule``): mmengine's layout,
  ``{'state_dict': <mmdet / mmseg model keys>, 'meta': {'dataset_meta': ..., ...}}``, which
  MMDetection's and MMSegmentation's own ``tools/test.py``, ``load_from`` and
  ``init_cfg=dict(type='Pretrained', checkpoint=...)`` accept; the training config can be written
  beside it (``config_out``) for those tools.
- Classification (``ClassificationModule``): the timm model's own layout (backbone keys and
  ``head.*``), as ``timm.create_model(name, checkpoint_path=...)`` and this project's
  ``init_cfg`` / ``--model.checkpoint`` loaders read it; ``ema=True`` takes the EMA weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from backbones._helpers import read_checkpoint

__all__ = ["checkpoint_task", "convert_checkpoint"]


def checkpoint_task(checkpoint: dict) -> str:
    """'mm' or 'classification', from what the module saved as its hyper-parameters."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if "config" in hparams and isinstance(checkpoint.get("state_dict"), dict):
        return "mm"
    if "model_name" in hparams and isinstance(checkpoint.get("state_dict"), dict):
        return "classification"
    raise ValueError("not a Lightning checkpoint of this project: expected 'state_dict' and the "
                     "hyper-parameters of DetectionModule / SegmentationModule ('config') or "
                     "ClassificationModule ('model_name'); plain weights need no conversion")


def _strip(state: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def convert_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, ema: bool = False,
                       config_out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write ``checkpoint``'s weights to ``out`` in the layout of its task (module docstring);
    returns a summary (task, number of tensors, files written)."""
    ckpt = read_checkpoint(checkpoint)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{checkpoint} holds a {type(ckpt).__name__}, not a checkpoint dict")
    try:
        task = checkpoint_task(ckpt)
    except ValueError as e:
        raise ValueError(f"{checkpoint}: {e}") from None
    hparams, state = ckpt["hyper_parameters"], ckpt["state_dict"]
    written = [Path(out)]
    if task == "mm":
        if ema:
            raise ValueError("--ema applies to classification checkpoints (the MM modules keep "
                             "no EMA copy)")
        weights = _strip(state, "model.")
        cfg = hparams["config"]
        payload: dict[str, Any] = {
            "state_dict": weights,
            "meta": {"dataset_meta": hparams.get("dataset_meta"),
                     "epoch": ckpt.get("epoch"), "iter": ckpt.get("global_step"),
                     "converted_from": str(checkpoint)}}
        if config_out is not None:
            from mmengine.config import Config

            Config(cfg).dump(str(config_out))
            written.append(Path(config_out))
    else:
        if config_out is not None:
            raise ValueError("--config-out applies to detection / segmentation checkpoints")
        prefix = "model_ema.module." if ema else "model."
        if ema and not any(k.startswith(prefix) for k in state):
            raise ValueError(f"{checkpoint} has no EMA weights (trained without ema_decay); "
                             "convert without --ema")
        model = _strip(state, prefix)
        payload = {**_strip(model, "backbone."),
                   **{f"head.{k}": v for k, v in _strip(model, "head.").items()}}
        weights = payload
    if not weights:
        raise ValueError(f"{checkpoint} holds no model weights under the expected prefix")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)
    return {"task": task, "tensors": len(weights), "written": [str(p) for p in written],
            "model": hparams.get("model_name") or (hparams["config"].get("model") or {}
                                                   ).get("type")}
