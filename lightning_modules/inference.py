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

from . import compat
from .mm_bridge import load_config, task_module

__all__ = ["infer"]


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
    compat.install()
    cfg = load_config(config)
    # The checkpoint rebuilds the module (its weights and class names); the config given here
    # decides the test pipeline and test mode.
    module = task_module(cfg).load_from_checkpoint(checkpoint, map_location="cpu", config=cfg)
    model = module.model.eval()
    if cfg.default_scope == "mmseg":
        return _segment(model, cfg, module.dataset_meta, images, Path(out_dir))
    return _detect(model, cfg, module.dataset_meta, images, Path(out_dir), score_thr)


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


def _detect(model, cfg, meta: dict, images: list[str], out_dir: Path, score_thr: float
            ) -> list[Path]:
    from mmdet.apis import inference_detector
    from mmdet.visualization import DetLocalVisualizer

    model.cfg = cfg  # inference_detector reads the test pipeline from here
    model.dataset_meta = meta
    visualizer = DetLocalVisualizer(name=f"infer_{id(model)}")
    visualizer.dataset_meta = meta
    return _write_pictures(
        images, out_dir, lambda path: inference_detector(model, path),
        lambda name, image, result, out: visualizer.add_datasample(
            name, image, result, draw_gt=False, show=False, pred_score_thr=score_thr,
            out_file=out))


def _segment(model, cfg, meta: dict, images: list[str], out_dir: Path) -> list[Path]:
    from mmseg.apis import inference_model
    from mmseg.visualization import SegLocalVisualizer

    dataset_cfg = cfg.test_dataloader.dataset
    # inference_model builds `model.cfg.test_pipeline` (dropping LoadAnnotations): give it the
    # pipeline the test loader runs, whether or not the config also names it `test_pipeline`.
    model.cfg = Config(dict(test_pipeline=copy.deepcopy(dataset_cfg.pipeline)))
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
