"""Whole-model benchmarks (``tools/benchmark.py --mode seg`` / ``det``): UperNet and Mask R-CNN
built from MM configs, the project's backbones against MMSegmentation's / MMDetection's Swin-T.

A model is built from its config (``mm_bridge.load_config`` + the scope's ``MODELS``) with no
weights and fed synthetic, already normalised tensors with the data samples the model needs: the
MM data pipeline and ``data_preprocessor`` are the same for both sides and not what is compared.
Each job times the whole call (``predict`` or ``loss`` + backward + AdamW step) and, inside the
same timed iterations, the parts: the backbone, neck and heads are wrapped with clocks (instance
attributes shadowing their methods), and whatever is left is ``other`` (resizing logits,
sliding-window bookkeeping, pasting masks). Imports MM; only these modes load it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .measure import _autocast, _sync, _time_iterations

__all__ = ["BACKBONES", "PAIRS", "PHASES", "TASK_MODELS", "PartClock", "build_task_model",
           "parse_shape",
           "slide_windows", "task_job", "task_jobs"]

ROOT = Path(__file__).resolve().parents[1]

# name -> (task, config relative to the repository root, label). The comparison models' configs
# live in benchmarks/configs: the project's configs with only ``model.backbone`` replaced.
TASK_MODELS: dict[str, tuple[str, str, str]] = {
    "upernet_inline-swin-t": (
        "seg", "configs/inline_swin/upernet_inline-swin-t_8xb2-160k_ade20k-512x512.py",
        "UperNet InLine-Swin-T"),
    "upernet_l2vit-t": (
        "seg", "configs/l2vit/upernet_l2vit-t_8xb2-160k_ade20k-512x512.py", "UperNet L2ViT-T"),
    "upernet_swin-t": (
        "seg", "benchmarks/configs/upernet_swin-t_8xb2-160k_ade20k-512x512.py",
        "UperNet Swin-T (mmseg)"),
    "mask-rcnn_inline-swin-t": (
        "det", "configs/inline_swin/mask-rcnn_inline-swin-t_fpn_1x_coco.py",
        "Mask R-CNN InLine-Swin-T"),
    "mask-rcnn_swin-t": (
        "det", "benchmarks/configs/mask-rcnn_swin-t_fpn_1x_coco.py", "Mask R-CNN Swin-T (mmdet)"),
}
# (project model, comparison model) per task: the pairs the tables and plots are made of.
PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "seg": (("upernet_inline-swin-t", "upernet_swin-t"), ("upernet_l2vit-t", "upernet_swin-t")),
    "det": (("mask-rcnn_inline-swin-t", "mask-rcnn_swin-t"),),
}
PHASES = {"seg": ("whole", "slide"), "det": ("infer", "train")}
# The timm model of each task model's backbone: the backbone-only jobs of the same run.
BACKBONES = {"upernet_inline-swin-t": "inline_swin_tiny", "upernet_l2vit-t": "l2vit_tiny",
             "upernet_swin-t": "swin_tiny_patch4_window7_224",
             "mask-rcnn_inline-swin-t": "inline_swin_tiny",
             "mask-rcnn_swin-t": "swin_tiny_patch4_window7_224"}
# Random weights score every class near 1/81, under Mask R-CNN's 0.05 test threshold, so no box
# would reach the mask head. For inference the box classifier's bias of class 0 is raised by this
# much (its score ~0.4): every proposal passes the threshold for that one class, NMS keeps at most
# max_per_img (100) and the mask head and mask pasting run on them, as with a trained model.
# (A threshold of 0 instead would run NMS over 80 classes x 1000 boxes, a cost a trained model
# never pays and that varies with the random scores.) Applied to both sides alike.
DET_CLASS0_BIAS = 4.0


def parse_shape(text: str | int) -> tuple[int, int]:
    """``1024`` -> (1024, 1024); ``1024x2048`` -> (1024, 2048) (height x width)."""
    h, _, w = str(text).lower().partition("x")
    try:
        shape = (int(h), int(w or h))
    except ValueError:
        raise ValueError(f"size {text!r}: write S (square) or HxW, e.g. 1024x2048") from None
    if min(shape) < 32:
        raise ValueError(f"size {text!r}: sides must be >= 32 pixels")
    return shape


def _shape_text(hw: Sequence[int]) -> str:
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def slide_windows(hw: Sequence[int], crop: Sequence[int], stride: Sequence[int]) -> int:
    """How many crops mmseg's ``slide_inference`` runs on an image of ``hw`` (its grid rule)."""
    n = 1
    for size, c, s in zip(hw, crop, stride, strict=True):
        n *= max(size - c + s - 1, 0) // s + 1
    return n


def _slide_cfg(cfg: Any) -> dict[str, Any]:
    """The slide settings the configs document (crop 512, stride 341, as in upernet_fcn-aux.py),
    or the config's own where it already slides."""
    test_cfg = cfg.model.get("test_cfg") or {}
    if test_cfg.get("mode") == "slide":
        return dict(mode="slide", crop_size=tuple(test_cfg["crop_size"]),
                    stride=tuple(test_cfg["stride"]))
    return dict(mode="slide", crop_size=(512, 512), stride=(341, 341))


def task_jobs(names: Sequence[str], sizes: Sequence[str | int], phases: Sequence[str],
              slide_sizes: Sequence[str | int] = (), device: str = "cpu", warmup: int = 1,
              runs: int = 3, threads: int | None = None, precision: str = "32",
              malloc: str = "system") -> list[dict[str, Any]]:
    """Jobs ordered by pixels, then phase, with the models interleaved within a (size, phase),
    so that the models compared are measured back to back. ``slide`` runs at ``slide_sizes``."""
    tasks = set()
    for name in names:
        if name not in TASK_MODELS:
            raise ValueError(f"unknown task model {name!r}; use one of {sorted(TASK_MODELS)}")
        tasks.add(TASK_MODELS[name][0])
    if len(tasks) != 1:
        raise ValueError(f"task models {list(names)} mix tasks; run seg and det separately")
    task = tasks.pop()
    for phase in phases:
        if phase not in PHASES[task]:
            raise ValueError(f"phase {phase!r} is not one of {task}'s {PHASES[task]}")
    rows = [(parse_shape(s), p) for p in phases if p != "slide" for s in sizes]
    if "slide" in phases:
        rows += [(parse_shape(s), "slide") for s in slide_sizes]
    rows.sort(key=lambda r: (r[0][0] * r[0][1], list(PHASES[task]).index(r[1])))
    jobs = []
    for hw, phase in rows:
        for name in names:
            _, config, label = TASK_MODELS[name]
            work = hw[0] * hw[1]
            if phase == "slide":  # cost follows the number of crops, not the image
                from mmengine.config import Config

                crop = _slide_cfg(Config.fromfile(str(ROOT / config)))
                work = slide_windows(hw, crop["crop_size"], crop["stride"]) * \
                    crop["crop_size"][0] * crop["crop_size"][1]
            jobs.append(dict(kind="task", task=task, model=name, config=config,
                             label=f"{label} {phase}", phase=phase, mode=phase,
                             size=_shape_text(hw), hw=list(hw), pixels=hw[0] * hw[1], work=work,
                             batch=1, precision=precision, device=device, warmup=warmup,
                             runs=runs, threads=threads, malloc=malloc))
    return jobs


# ---- model and inputs ---------------------------------------------------------------------------

def build_task_model(job: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The job's model (no weights, SyncBN as BN, ``slide`` test settings for slide jobs) and its
    config, with ``job['cfg_options']`` merged (tests use them for tiny models)."""
    from mmengine.model import revert_sync_batchnorm

    from lightning_modules.mm_bridge import load_config

    options = dict(job.get("cfg_options") or {})
    cfg = load_config(str(ROOT / job["config"]), options or None)
    if job["phase"] == "slide":
        cfg.model.test_cfg = _slide_cfg(cfg)
    backbone = cfg.model.backbone
    if backbone.get("init_cfg"):  # no pretrained file is read: timing needs no weights
        backbone.init_cfg = None
    scope = cfg.default_scope
    registry = __import__(f"{scope}.registry", fromlist=["MODELS"]).MODELS
    torch.manual_seed(0)
    model = revert_sync_batchnorm(registry.build(cfg.model))
    return model, cfg


def _det_samples(hw: tuple[int, int], padded: tuple[int, int], train: bool,
                 num_classes: int, boxes: int = 8) -> list[Any]:
    """One DetDataSample as the pipeline + preprocessor would make it; for training with
    ``boxes`` random ground-truth boxes, labels and box-shaped masks (fixed seed)."""
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    h, w = hw
    sample = DetDataSample(metainfo=dict(img_shape=hw, ori_shape=hw, pad_shape=padded,
                                         batch_input_shape=padded, scale_factor=(1.0, 1.0)))
    if train:
        g = np.random.default_rng(0)
        x1 = g.uniform(0, w * 0.7, boxes)
        y1 = g.uniform(0, h * 0.7, boxes)
        bw = g.uniform(0.05, 0.3, boxes) * w
        bh = g.uniform(0.05, 0.3, boxes) * h
        xyxy = np.stack([x1, y1, np.minimum(x1 + bw, w - 1), np.minimum(y1 + bh, h - 1)], 1)
        masks = np.zeros((boxes, h, w), dtype=np.uint8)
        for i, (a, b, c, d) in enumerate(xyxy.astype(int)):
            masks[i, b:d + 1, a:c + 1] = 1
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor(xyxy, dtype=torch.float32),
            labels=torch.tensor(g.integers(0, num_classes, boxes)),
            masks=BitmapMasks(masks, h, w))
    return [sample]


# ---- timing the parts ---------------------------------------------------------------------------

class PartClock:
    """Wall and CPU seconds spent in named parts of one iteration, accumulated over calls (slide
    inference runs the backbone once per crop). Parts must not nest."""

    def __init__(self, device: torch.device):
        self.device = device
        self.current: dict[str, list[float]] | None = None
        self.iterations: list[dict[str, list[float]]] = []
        self.notes: dict[str, Any] = {}  # facts of the last iteration, for the record

    def _now(self) -> tuple[float, float]:
        """(wall, process CPU) seconds once the device's queued work is done."""
        _sync(self.device)
        return time.perf_counter(), time.process_time()

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        if self.current is None:  # outside a measured iteration: no bookkeeping
            yield
            return
        start = self._now()
        try:
            yield
        finally:
            end = self._now()
            acc = self.current.setdefault(name, [0.0, 0.0])
            for i in (0, 1):
                acc[i] += end[i] - start[i]

    def wrap(self, obj: Any, method: str, name: str) -> None:
        """Time every call of ``obj.method`` as part ``name``."""
        fn = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                return fn(*args, **kwargs)
        setattr(obj, method, timed)

    @contextlib.contextmanager
    def iteration(self) -> Iterator[None]:
        """One iteration; what its parts do not cover is recorded as ``other``."""
        self.current = {}
        start = self._now()
        try:
            yield
        finally:
            end = self._now()
            parts = self.current
            parts["other"] = [max(0.0, end[i] - start[i] - sum(v[i] for v in parts.values()))
                              for i in (0, 1)]
            self.iterations.append(parts)
            self.current = None

    def medians(self, first: int, count: int) -> dict[str, dict[str, float]]:
        """Per part, the median over iterations ``first .. first + count - 1`` (ms), wall and
        CPU."""
        its = self.iterations[first:first + count]
        names = [n for n in its[0] if n != "other"] + ["other"] if its else []
        out: dict[str, dict[str, float]] = {"parts_ms": {}, "parts_cpu_ms": {}}
        for n in names:
            out["parts_ms"][n] = round(statistics.median(i.get(n, [0, 0])[0] for i in its)
                                       * 1e3, 3)
            out["parts_cpu_ms"][n] = round(statistics.median(i.get(n, [0, 0])[1] for i in its)
                                           * 1e3, 3)
        return out


def _seg_step(model: torch.nn.Module, clock: PartClock, job: dict[str, Any],
              device: torch.device) -> Callable[[], Any]:
    clock.wrap(model.backbone, "forward", "backbone")
    if getattr(model, "with_neck", False):
        clock.wrap(model.neck, "forward", "neck")
    clock.wrap(model.decode_head, "forward", "decode_head")
    h, w = job["hw"]
    x = torch.randn(job["batch"], 3, h, w, device=device)
    model.eval()

    def step() -> Any:
        with clock.iteration(), torch.inference_mode(), _autocast(device, job["precision"]):
            return model.predict(x)
    return step


def _det_step(model: torch.nn.Module, clock: PartClock, job: dict[str, Any],
              device: torch.device, num_classes: int) -> Callable[[], Any]:
    clock.wrap(model.backbone, "forward", "backbone")
    clock.wrap(model.neck, "forward", "neck")
    train = job["phase"] == "train"
    rpn, roi = ("loss_and_predict", "loss") if train else ("predict", "predict")
    clock.wrap(model.rpn_head, rpn, "rpn_head")
    clock.wrap(model.roi_head, roi, "roi_head")
    h, w = job["hw"]
    padded = (-(-h // 32) * 32, -(-w // 32) * 32)  # DetDataPreprocessor's pad_size_divisor
    x = torch.randn(job["batch"], 3, *padded, device=device)
    samples = [s.to(device) for s in _det_samples((h, w), padded, train, num_classes)
               for _ in range(job["batch"])]
    with torch.no_grad():
        # Random RPN weights make each model propose different boxes, and RoIAlign's cost
        # follows the boxes' sizes (adaptive sampling): measured here, one model's RoI head took
        # 1.5x the other's on the same shapes. With zero objectness and deltas both rank the
        # same anchors alike and propose the same boxes, so the heads' work is the same for both.
        for conv in (model.rpn_head.rpn_cls, model.rpn_head.rpn_reg):
            conv.weight.zero_()
            conv.bias.zero_()
    if not train:
        model.eval()
        with torch.no_grad():
            model.roi_head.bbox_head.fc_cls.bias[0] += DET_CLASS0_BIAS

        def infer() -> Any:
            with clock.iteration(), torch.inference_mode(), _autocast(device, job["precision"]):
                out = model.predict(x, samples, rescale=True)
            clock.notes["detections"] = len(out[0].pred_instances)
        return infer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)  # the 1x schedule's

    def train_step() -> Any:
        with clock.iteration():
            opt.zero_grad(set_to_none=True)
            with _autocast(device, job["precision"]):
                losses = model.loss(x, samples)
            loss, _ = model.parse_losses(losses)
            with clock.part("backward"):
                loss.backward()
            with clock.part("optimizer"):
                opt.step()
    return train_step


def task_job(job: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Measure one task job (in the worker): the timings of ``measure._time_iterations`` plus
    the median split of the timed iterations into parts, and the model's parameter count."""
    model, cfg = build_task_model(job)
    model = model.to(device)
    clock = PartClock(device)
    if job["task"] == "seg":
        step = _seg_step(model, clock, job, device)
    else:
        num_classes = cfg.model.roi_head.bbox_head.num_classes
        step = _det_step(model, clock, job, device, num_classes)
    out = _time_iterations(step, device, job["warmup"], job["runs"], job["budget_s"],
                           job.get("profile", False))
    out.update(clock.medians(job["warmup"], out["runs"]))
    out.update(clock.notes)
    out["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
    out["backbone_params_m"] = round(sum(p.numel() for p in model.backbone.parameters()) / 1e6,
                                     3)
    if job["phase"] == "slide":
        crop = cfg.model.test_cfg
        out["windows"] = slide_windows(job["hw"], crop["crop_size"], crop["stride"])
    return out
