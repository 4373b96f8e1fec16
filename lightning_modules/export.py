"""Export for deployment: ``torch.export`` (an ``ExportedProgram`` saved as ``.pt2``) and ONNX
(torch's dynamo exporter), with dynamic height and width, checked against eager PyTorch.

What is exported, by target (``tools/export.py TARGET``):

- a timm name of this project (``inline_swin_tiny``; ``--model-kwargs``): the classifier, input a
  normalised NCHW image as timm models take it, output logits; with ``features_only`` the
  backbone, output its feature maps (NCHW);
- an MM segmentation config: the whole segmentor in whole-image mode, input an RGB image with
  values 0..255 (float32, NCHW), output the logits at the input's size (what
  ``EncoderDecoder`` computes before its argmax, for an unpadded image);
- an MM detection config: the backbone plus the neck, input as for segmentation, output the
  neck's maps (the heads' sampling and NMS stay in Python).

The MM wrappers apply the config's ``data_preprocessor`` normalisation (mean, std, channel
order) themselves, so the exported file takes plain RGB pixels.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F
from torch import nn

__all__ = ["ExportTarget", "check_export", "export_model", "load_target", "parse_size"]

FORMATS = ("onnx", "exported-program")
_PROJECT_DIRS = ("backbones", "heads", "lightning_modules", "mmdet", "mmseg", "mmcv", "timm")


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' or 'S' -> (H, W)."""
    parts = text.lower().split("x")
    try:
        size = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else None
    except ValueError:
        size = None
    if size is None or min(size) < 1:
        raise ValueError(f"size {text!r}: write HEIGHTxWIDTH (e.g. 512x384) or one number")
    return size


class _RGBInput(nn.Module):
    """The normalisation of an MM ``data_preprocessor`` in front of a network: RGB 0..255 in."""

    def __init__(self, data_preprocessor: nn.Module):
        super().__init__()
        mean = getattr(data_preprocessor, "mean", None)
        std = getattr(data_preprocessor, "std", None)
        self.register_buffer("mean", (mean if mean is not None else torch.zeros(3, 1, 1)).float()
                             .reshape(1, -1, 1, 1).clone(), persistent=False)
        self.register_buffer("std", (std if std is not None else torch.ones(3, 1, 1)).float()
                             .reshape(1, -1, 1, 1).clone(), persistent=False)

    def normalise(self, rgb: torch.Tensor) -> torch.Tensor:
        # mmengine flips BGR files to RGB before normalising, so mean / std are in RGB order.
        return (rgb - self.mean) / self.std


class SegmentorLogits(_RGBInput):
    """An mmseg ``EncoderDecoder`` in whole-image mode: logits (N, classes, H, W) at the input
    size, as its ``predict`` computes them before the argmax for an image needing no padding."""

    def __init__(self, segmentor: nn.Module):
        super().__init__(segmentor.data_preprocessor)
        self.segmentor = segmentor

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        seg = self.segmentor
        logits = seg.decode_head(seg.extract_feat(self.normalise(rgb)))
        return F.interpolate(logits, size=rgb.shape[2:], mode="bilinear",
                             align_corners=seg.decode_head.align_corners)


class DetectorFeatures(_RGBInput):
    """An mmdet detector's backbone and neck: the maps its heads read."""

    def __init__(self, detector: nn.Module):
        super().__init__(detector.data_preprocessor)
        self.detector = detector

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.detector.extract_feat(self.normalise(rgb)))


class _IntegerUpsample(nn.Module):
    """mmseg's ``Upsample`` for a whole-number scale factor, with the output size as integer
    arithmetic: mmseg computes ``int(size * factor)`` in floats, which the exporters can only
    answer by fixing the input size. Same ``F.interpolate`` call, same result."""

    def __init__(self, factor: int, mode: str, align_corners: bool | None):
        super().__init__()
        self.factor, self.mode, self.align_corners = factor, mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] * self.factor, x.shape[-1] * self.factor)
        return F.interpolate(x, size=size, mode=self.mode, align_corners=self.align_corners)


class _MatrixAdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products whose bins are computed from the input's
    size (torch's bins: ``floor(i n / k)`` to ``ceil((i + 1) n / k)``). ONNX has no adaptive
    pooling operator, and the ONNX exporter's decomposition fixes the bins at the example's
    size: onnxruntime then indexed out of bounds at other sizes (UperNet's pyramid pooling)."""

    def __init__(self, output_size: tuple[int, int]):
        super().__init__()
        self.output_size = output_size

    @staticmethod
    def _weights(n: int, k: int, like: torch.Tensor) -> torch.Tensor:
        i = torch.arange(k, device=like.device)
        start, end = (i * n) // k, ((i + 1) * n + k - 1) // k
        j = torch.arange(n, device=like.device)
        inside = ((j >= start[:, None]) & (j < end[:, None])).to(like.dtype)  # (k, n)
        return inside / inside.sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._weights(x.shape[-2], self.output_size[0], x)
        cols = self._weights(x.shape[-1], self.output_size[1], x)
        return rows @ x @ cols.transpose(0, 1)


def _replacement(m: nn.Module, fmt: str, upsample: type | tuple) -> nn.Module | None:
    """The size-independent equivalent of ``m`` for exporting as ``fmt``, if ``m`` needs one
    (``upsample``: mmseg's ``Upsample`` class, or ``()`` without mmseg)."""
    if (isinstance(m, upsample) and not m.size and not isinstance(m.scale_factor, tuple)
            and float(m.scale_factor).is_integer()):
        return _IntegerUpsample(int(m.scale_factor), m.mode, m.align_corners)
    if fmt == "onnx" and isinstance(m, nn.AdaptiveAvgPool2d):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 2
        # A global pool (1 x 1) exports as ONNX's GlobalAveragePool; None keeps a side: rare.
        if None not in size and size != (1, 1):
            return _MatrixAdaptiveAvgPool(size)
    return None


def _exportable(model: nn.Module, fmt: str) -> nn.Module:
    """A copy of ``model`` with the layers that specialise on the input size when exported as
    ``fmt`` replaced by equivalents that do not (the check compares the export with the
    unchanged model); ``model`` itself where none does."""
    try:
        from mmseg.models.utils import Upsample
    except ImportError:  # no mmseg: none of its layers to replace
        Upsample = ()  # noqa: N806
    # The replacements hold no weights: made once, set into the copy by name.
    swaps = {name: new for name, m in model.named_modules()
             if name and (new := _replacement(m, fmt, Upsample)) is not None}
    if not swaps:
        return model
    model = copy.deepcopy(model)
    for name, new in swaps.items():
        model.set_submodule(name, new)
    return model


class _Tuple(nn.Module):
    """timm's ``features_only`` models return a list; exporters want a tuple."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))


@dataclass
class ExportTarget:
    """A network ready to export, with what the exported file's users need to know."""

    model: nn.Module
    kind: str  # 'classifier', 'features', 'segmentor' or 'detector-features'
    input: str  # what the input tensor holds
    example_size: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)
    # Smallest height / width exported by default: every map inside must stay at least 2 pixels
    # a side, as torch.export specialises sizes of 1.
    min_size: int = 64


def _timm_target(name: str, checkpoint: str | None, model_kwargs: dict,
                 features_only: bool) -> ExportTarget:
    import timm

    import backbones  # noqa: F401  (registers the families)

    if not timm.is_model(name):
        known = ", ".join(timm.list_models("inline_*") + timm.list_models("l2vit_*"))
        raise ValueError(f"unknown model {name!r}: give a timm name of this project ({known}) "
                         "or an MM config file (.py)")
    kwargs = dict(model_kwargs)
    if checkpoint:
        weights = _classifier_weights(checkpoint, kwargs)
        kwargs.setdefault("num_classes", weights["head.weight"].shape[0]
                          if "head.weight" in weights else 0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    if checkpoint:
        family = importlib.import_module(type(model).__module__)
        model.load_state_dict(family.checkpoint_filter_fn(weights, model), strict=True)
    if features_only:
        # timm's feature wrapper holds a pruned copy of the model under `model.`: take its
        # weights from the loaded classifier.
        full = model
        model = timm.create_model(name, pretrained=False, features_only=True,
                                  **{k: v for k, v in kwargs.items() if k != "num_classes"})
        inner = model.model
        inner.load_state_dict({k: v for k, v in full.state_dict().items()
                               if k in inner.state_dict()}, strict=True)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    info = {"model": name, "model_kwargs": model_kwargs}
    if features_only:
        info["feature_info"] = [dict(num_chs=c, reduction=r) for c, r in
                                zip(model.feature_info.channels(),
                                    model.feature_info.reduction(), strict=True)]
        return ExportTarget(_Tuple(model).eval(), "features",
                            "normalised image (N, 3, H, W) as for the timm model", size, info)
    info["mean"], info["std"] = cfg.get("mean"), cfg.get("std")
    return ExportTarget(model.eval(), "classifier",
                        "normalised image (N, 3, H, W): (RGB / 255 - mean) / std", size, info)


def _classifier_weights(checkpoint: str, kwargs: dict) -> dict[str, torch.Tensor]:
    """timm-layout weights from a classification Lightning checkpoint of this project (its
    model_kwargs are adopted) or a plain / official state dict."""
    from backbones._helpers import read_checkpoint, unwrap_state_dict

    from .checkpoint_checks import check_checkpoint_file, check_checkpoint_file_task

    check_checkpoint_file(checkpoint, "--checkpoint")
    check_checkpoint_file_task(checkpoint, "classification")
    ckpt = read_checkpoint(checkpoint)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if hp and "model_name" in hp:
        for k, v in (hp.get("model_kwargs") or {}).items():
            kwargs.setdefault(k, v)
        state = ckpt["state_dict"]
        return {k[len("model.backbone."):] if k.startswith("model.backbone.") else
                k[len("model."):]: v for k, v in state.items()
                if k.startswith(("model.backbone.", "model.head."))}
    return unwrap_state_dict(ckpt)


def _mm_target(config: str, checkpoint: str | None) -> ExportTarget:
    from . import compat
    from .checkpoint_checks import (
        SCOPE_TASKS,
        check_checkpoint_file,
        check_checkpoint_file_task,
        loading_checkpoint,
    )
    from .config_checks import check_config
    from .mm_bridge import load_config, task_module

    compat.install()
    cfg = load_config(config)
    check_config(cfg)  # misspelt keys named before anything is built
    module_cls = task_module(cfg)
    if checkpoint:
        # Missing, empty, truncated, not a checkpoint, another task's: named before loading.
        check_checkpoint_file(checkpoint, "--checkpoint")
        check_checkpoint_file_task(checkpoint, SCOPE_TASKS[cfg.default_scope])
        with loading_checkpoint(checkpoint):
            module = module_cls.load_from_checkpoint(checkpoint, map_location="cpu", config=cfg)
    else:  # random weights: the graph is what matters
        module = module_cls(cfg)
    model = module.model.eval()
    if cfg.default_scope == "mmseg":
        from mmengine.model import revert_sync_batchnorm

        if cfg.model.get("test_cfg", {}).get("mode", "whole") != "whole":
            raise ValueError("only whole-image inference exports (model.test_cfg.mode='whole'); "
                             "sliding windows are a loop in Python around the exported model")
        target = ExportTarget(SegmentorLogits(revert_sync_batchnorm(model)).eval(), "segmentor",
                              "RGB image (N, 3, H, W), float32 values 0..255",
                              _test_size(cfg), {"config": str(config)})
        target.info["classes"] = list((module.dataset_meta or {}).get("classes") or [])
        return target
    # 128: the FPN's stride-64 level (P6) has 2 pixels a side from 65 up.
    return ExportTarget(DetectorFeatures(model).eval(), "detector-features",
                        "RGB image (N, 3, H, W), float32 values 0..255", _test_size(cfg),
                        {"config": str(config)}, min_size=128)


def _test_size(cfg) -> tuple[int, int]:
    """A representative input size: the test pipeline's Resize scale if any, else 512."""
    for step in (cfg.get("test_dataloader") or {}).get("dataset", {}).get("pipeline", []) or []:
        scale = step.get("scale") if isinstance(step, dict) else None
        if scale:
            w, h = (scale, scale) if isinstance(scale, int) else scale
            return min(h, w), min(h, w)
    return 512, 512


def load_target(target: str, checkpoint: str | None = None, model_kwargs: dict | None = None,
                features_only: bool = False) -> ExportTarget:
    """The network of ``target``: an MM config file (``.py``) or a timm name."""
    if str(target).endswith(".py"):
        if model_kwargs or features_only:
            raise ValueError("--model-kwargs and --features-only apply to timm names; change an "
                             "MM config with --cfg-options-style edits of the file instead")
        if not os.path.isfile(target):
            raise FileNotFoundError(f"config file not found: {target}")
        return _mm_target(target, checkpoint)
    return _timm_target(target, checkpoint, model_kwargs or {}, features_only)


def _where(exc: BaseException) -> str:
    """The innermost frame of the project or the model libraries in ``exc``'s traceback (the
    part that could not be exported), as 'file:line in function'."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        parts = Path(frame.filename).parts
        if (any(d in parts for d in _PROJECT_DIRS) and "torch" not in parts
                and Path(frame.filename).name != "export.py"):
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return ""


def _dynamic_hw(min_size: int, max_size: int) -> dict[int, Any]:
    from torch.export import Dim

    return {2: Dim("height", min=min_size, max=max_size),
            3: Dim("width", min=min_size, max=max_size)}


def export_model(target: ExportTarget, out: str | os.PathLike, fmt: str = "onnx",
                 example_size: tuple[int, int] | None = None, min_size: int | None = None,
                 max_size: int = 4096) -> Path:
    """Export ``target.model`` with dynamic height and width in ``[min_size, max_size]`` from an
    example of ``example_size`` (default: the target's); raises ``RuntimeError`` naming the
    part of the model that cannot be exported that way."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    h, w = example_size or target.example_size
    min_size = min_size or target.min_size
    example = _example(target, h, w)
    dynamic = {"x": _dynamic_hw(min_size, max_size)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = _Named(_exportable(target.model, fmt)).eval()
    try:
        # Size-oblivious reasoning for the symbolic sizes (what torch.onnx.export does itself):
        # a window count that is 1 at some sizes (Swin's last stage below 225 px) is then not
        # guarded to differ from 1.
        with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
            # torch.export first, for both formats: its shape guards fail loudly where the
            # ONNX exporter alone would quietly fall back to the example's fixed size.
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
            if fmt == "exported-program":
                torch.export.save(program, out)
            else:
                torch.onnx.export(program, (example,), out, dynamo=True, input_names=["x"],
                                  external_data=False, verbose=False)
                _check_onnx_dynamic(out)
    except Exception as e:  # the exporters raise many types; one message with the place
        where = _where(e) or _guard_site(model, example, dynamic)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()
                 and "TORCH_LOGS" not in ln and "For more information" not in ln]
        first = " ".join(lines[:3])[:600] or type(e).__name__
        raise RuntimeError(
            f"cannot export the {target.kind} as {fmt} with dynamic height and width in "
            f"[{min_size}, {max_size}]: {type(e).__name__}: {first}"
            + (f" (at {where})" if where else "")
            + "; try --min-size / --max-size, or a fixed size (--min-size = --max-size = the "
            "example size)") from e
    return out


def _guard_site(model: nn.Module, example: torch.Tensor, dynamic: dict) -> str:
    """Where the model's code branches on or specialises the input size: torch's draft export
    records the Python line of each guard it had to add; the first one, as 'function: code'."""
    try:
        with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
            report = torch.export.draft_export(model, (example,), dynamic_shapes=dynamic)._report
        for failure in report.failures:
            stack = (failure.data or {}).get("user_stack") if isinstance(failure.data, dict) \
                else None
            if stack:
                return f"{stack[-1]['name']}: {stack[-1]['loc'].strip()}"
    except Exception:  # only a diagnosis: the original error is raised anyway
        return ""
    return ""


def _check_onnx_dynamic(path: Path) -> None:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    fixed = [i for i in (2, 3) if not dims[i].dim_param]
    if fixed:
        raise RuntimeError(f"the ONNX graph's input has fixed sizes at axes {fixed}")


class _Named(nn.Module):
    """Names the input ``x`` for ``dynamic_shapes`` whatever the wrapped forward calls it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(x)


def _example(target: ExportTarget, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h, w, generator=g)
    return x * 255 if target.kind in ("segmentor", "detector-features") else (x - 0.45) / 0.25


def _as_list(y) -> list[torch.Tensor]:
    return [y] if isinstance(y, torch.Tensor) else list(y)


def check_export(target: ExportTarget, path: str | os.PathLike, fmt: str,
                 sizes: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Largest absolute difference between the exported file (onnxruntime for ONNX) and eager
    PyTorch, per output size 'HxW'."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x):
            return [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]
    else:
        program = torch.export.load(str(path)).module()

        def run(x):
            with torch.no_grad():
                return _as_list(program(x))
    diffs = {}
    for h, w in sizes:
        x = _example(target, h, w, seed=h * 7919 + w)
        with torch.no_grad():
            ref = _as_list(target.model(x))
        try:
            got = run(x)
        except Exception as e:  # onnxruntime raises its own types
            raise RuntimeError(f"{path} fails at {h}x{w}, a size it was exported for: "
                               f"{type(e).__name__}: {str(e)[:400]}") from e
        if len(got) != len(ref) or any(a.shape != b.shape for a, b in zip(got, ref, strict=True)):
            raise RuntimeError(f"{path} at {h}x{w}: outputs {[tuple(a.shape) for a in got]}, "
                               f"eager {[tuple(b.shape) for b in ref]}")
        diffs[f"{h}x{w}"] = max(float((a.float() - b.float()).abs().max())
                                for a, b in zip(got, ref, strict=True))
    return diffs


def write_card(target: ExportTarget, path: Path, fmt: str, diffs: dict[str, float],
               min_size: int, max_size: int) -> Path:
    """A JSON beside the file: what goes in and out, and the check's figures."""
    card = path.with_suffix(path.suffix + ".json")
    card.write_text(json.dumps({
        "file": path.name, "format": fmt, "kind": target.kind, "input": target.input,
        "dynamic_height_width": [min_size, max_size], "example_size": target.example_size,
        "max_abs_diff_vs_eager": diffs, **target.info}, indent=1, default=str))
    return card
