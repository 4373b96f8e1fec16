"""Run a trained MM model on image files and write pictures of its predictions."""

from __future__ import annotations

import os
from pathlib import Path

import mmcv

from .cli import load_weights
from .mm_bridge import MMModelModule, load_config

__all__ = ["infer"]


def _task(cfg) -> type[MMModelModule]:
    scope = cfg.get("default_scope", "mmdet")
    if scope == "mmdet":
        from .detection import DetectionModule
        return DetectionModule
    raise ValueError(f"no inference for default_scope {scope!r} (mmdet configs are supported)")


def infer(config: str | os.PathLike, checkpoint: str | os.PathLike, images: list[str],
          out_dir: str | os.PathLike, score_thr: float = 0.3) -> list[Path]:
    """Predict each image and write ``out_dir/<name>`` with boxes and masks drawn."""
    from mmdet.apis import inference_detector
    from mmdet.visualization import DetLocalVisualizer

    cfg = load_config(config)
    module = _task(cfg)(cfg)
    load_weights(module, checkpoint)
    model = module.model.eval()
    model.cfg = cfg  # inference_detector reads the test pipeline from here
    dataset_cfg = cfg.test_dataloader.dataset
    meta = dict(dataset_cfg.get("metainfo") or {})
    if "classes" not in meta:
        from mmdet.registry import DATASETS
        meta = dict(DATASETS.get(dataset_cfg.type).METAINFO)
    model.dataset_meta = meta
    visualizer = DetLocalVisualizer(name=f"infer_{id(model)}")
    visualizer.dataset_meta = meta
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image not found: {path}")
        image = mmcv.imread(path, channel_order="rgb")
        if image is None:
            raise ValueError(f"cannot decode image {path}: not an image or corrupt")
        result = inference_detector(model, path)
        out = out_dir / Path(path).name
        visualizer.add_datasample(Path(path).stem, image, result, draw_gt=False, show=False,
                                  pred_score_thr=score_thr, out_file=str(out))
        written.append(out)
    return written
