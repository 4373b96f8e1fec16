"""Run a trained MM model on image files and write pictures of its predictions.

Detection configs (``default_scope='mmdet'``) get boxes and masks drawn, segmentation configs
(``'mmseg'``) the predicted class map blended over the image, in the config's test mode.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import mmcv
import numpy as np
from mmengine.config import Config

from .cli import load_weights
from .mm_bridge import MMModelModule, load_config

__all__ = ["infer"]


def _task(cfg) -> type[MMModelModule]:
    scope = cfg.get("default_scope", "mmdet")
    if scope == "mmdet":
        from .detection import DetectionModule
        return DetectionModule
    if scope == "mmseg":
        from .segmentation import SegmentationModule
        return SegmentationModule
    raise ValueError(f"no inference for default_scope {scope!r} (mmdet and mmseg configs are "
                     "supported)")


def _read_image(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    image = mmcv.imread(path, channel_order="rgb")
    if image is None:
        raise ValueError(f"cannot decode image {path}: not an image or corrupt")
    return image


def infer(config: str | os.PathLike, checkpoint: str | os.PathLike, images: list[str],
          out_dir: str | os.PathLike, score_thr: float = 0.3) -> list[Path]:
    """Predict each image and write ``out_dir/<name>``: boxes and masks drawn for detection
    (``score_thr`` applies), the class map blended over the image for segmentation."""
    cfg = load_config(config)
    module = _task(cfg)(cfg)
    load_weights(module, checkpoint)
    model = module.model.eval()
    if module.default_scope == "mmseg":
        return _segment(model, cfg, images, Path(out_dir))
    return _detect(model, cfg, images, Path(out_dir), score_thr)


def _write_pictures(images: list[str], out_dir: Path, predict, draw) -> list[Path]:
    """``draw(name, image, predict(path), out_file)`` for each image; the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        image = _read_image(path)
        out = out_dir / Path(path).name
        draw(Path(path).stem, image, predict(path), str(out))
        written.append(out)
    return written


def _detect(model, cfg, images: list[str], out_dir: Path, score_thr: float) -> list[Path]:
    from mmdet.apis import inference_detector
    from mmdet.visualization import DetLocalVisualizer

    model.cfg = cfg  # inference_detector reads the test pipeline from here
    dataset_cfg = cfg.test_dataloader.dataset
    meta = dict(dataset_cfg.get("metainfo") or {})
    if "classes" not in meta:
        from mmdet.registry import DATASETS
        meta = dict(DATASETS.get(dataset_cfg.type).METAINFO)
    model.dataset_meta = meta
    visualizer = DetLocalVisualizer(name=f"infer_{id(model)}")
    visualizer.dataset_meta = meta
    return _write_pictures(
        images, out_dir, lambda path: inference_detector(model, path),
        lambda name, image, result, out: visualizer.add_datasample(
            name, image, result, draw_gt=False, show=False, pred_score_thr=score_thr,
            out_file=out))


def _segment(model, cfg, images: list[str], out_dir: Path) -> list[Path]:
    from mmseg.apis import inference_model
    from mmseg.registry import DATASETS
    from mmseg.visualization import SegLocalVisualizer

    dataset_cfg = cfg.test_dataloader.dataset
    # inference_model builds `model.cfg.test_pipeline` (dropping LoadAnnotations): give it the
    # pipeline the test loader runs, whether or not the config also names it `test_pipeline`.
    model.cfg = Config(dict(test_pipeline=copy.deepcopy(dataset_cfg.pipeline)))
    meta = {**DATASETS.get(dataset_cfg.type).METAINFO, **(dataset_cfg.get("metainfo") or {})}
    if "classes" not in meta:
        raise ValueError(f"no class names for {dataset_cfg.type}: set "
                         "test_dataloader.dataset.metainfo=dict(classes=..., palette=...)")
    classes = list(meta["classes"])
    palette = meta.get("palette")
    if not palette or len(palette) != len(classes):  # a fixed colour per class
        palette = np.random.default_rng(0).integers(0, 256, (len(classes), 3)).tolist()
    model.dataset_meta = dict(classes=classes, palette=palette)
    visualizer = SegLocalVisualizer(name=f"infer_{id(model)}", alpha=0.5)
    visualizer.set_dataset_meta(classes=classes, palette=palette)
    return _write_pictures(
        images, out_dir, lambda path: inference_model(model, path),
        lambda name, image, result, out: visualizer.add_datasample(
            name, image, result, draw_gt=False, show=False, with_labels=False, out_file=out))
