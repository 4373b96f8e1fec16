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
from .checkpoint_checks import (
    SCOPE_TASKS,
    check_checkpoint_file,
    check_checkpoint_file_task,
    loading_checkpoint,
)
from .config_checks import check_config
from .data_checks import DEFAULT_MAX_IMAGE_PIXELS, read_header
from .mm_bridge import load_config, task_module

__all__ = ["infer"]


def _read_image(path: str, max_pixels: int | None) -> np.ndarray:
    """The image as the test pipeline reads it (OpenCV through mmcv: upright, RGB), after the
    same header checks as training data (empty, unreadable, over ``max_pixels``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    header = read_header(path, max_pixels=max_pixels)
    image = mmcv.imread(path, channel_order="rgb")
    if image is None:
        raise ValueError(f"image {path} is a {header.format} file, which OpenCV (the pipeline's "
                         "decoder) cannot read; convert it to JPEG or PNG")
    return image


def infer(config: str | os.PathLike, checkpoint: str | os.PathLike, images: list[str],
          out_dir: str | os.PathLike, score_thr: float = 0.3) -> list[Path]:
    """Predict each image and write ``out_dir/<name>``: boxes and masks drawn for detection
    (``score_thr`` applies), the class map blended over the image for segmentation."""
    compat.install()
    cfg = load_config(config)
    check_config(cfg)
    check_checkpoint_file(checkpoint)
    check_checkpoint_file_task(checkpoint, SCOPE_TASKS[cfg.default_scope])
    # The checkpoint rebuilds the module (its weights and class names; one of another task is
    # refused, naming the file); the config given here decides the test pipeline and test mode.
    with loading_checkpoint(checkpoint):
        module = task_module(cfg).load_from_checkpoint(checkpoint, map_location="cpu",
                                                       config=cfg)
    model = module.model.eval()
    limit = cfg.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
    if cfg.default_scope == "mmseg":
        return _segment(model, cfg, module.dataset_meta, images, Path(out_dir), limit)
    return _detect(model, cfg, module.dataset_meta, images, Path(out_dir), score_thr, limit)


def _write_pictures(images: list[str], out_dir: Path, predict, draw, max_pixels: int | None
                    ) -> list[Path]:
    """``draw(name, image, predict(path), out_file)`` for each image; the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        image = _read_image(path, max_pixels)  # checked before the model sees it
        out = out_dir / Path(path).name
        draw(Path(path).stem, image, predict(path), str(out))
        written.append(out)
    return written


def _detect(model, cfg, meta: dict, images: list[str], out_dir: Path, score_thr: float,
            max_pixels: int | None) -> list[Path]:
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
            out_file=out), max_pixels)


def _segment(model, cfg, meta: dict, images: list[str], out_dir: Path, max_pixels: int | None
             ) -> list[Path]:
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
            name, image, result, draw_gt=False, show=False, with_labels=False, out_file=out),
        max_pixels)
