"""Export of whole MM models (lightning_modules/export.py, tools/export.py): the wrappers compute
what the MM models compute, and what cannot be exported with dynamic sizes is named.

Not yet here: the whole segmentor / detector exported once and checked at other sizes (the
backbones export with dynamic height and width, tests/backbones/test_export.py; the MM heads
do not yet: issue 14 stays open)."""

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_modules import export
from lightning_modules.demo_data import make_ade_demo, make_coco_demo
from lightning_modules.mm_bridge import MMDataModule, build_task, load_config

ROOT = Path(__file__).resolve().parents[2]
SEG_DEMO = ROOT / "configs/demo/fpn_inline-pvt-demo_demo-ade.py"
DET_DEMO = ROOT / "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"


def _options(root: str) -> dict:
    return {f"{s}_dataloader.{k}": v for s in ("train", "val", "test")
            for k, v in (("dataset.data_root", root), ("num_workers", 0),
                         ("persistent_workers", False))}


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    """A demo segmentation checkpoint after two steps, and its config file."""
    tmp = tmp_path_factory.mktemp("export")
    make_ade_demo(tmp, num_train=4, num_val=2, seed=3)
    cfg = load_config(SEG_DEMO, {**_options(str(tmp / "ade/ADEChallengeData2016")),
                                 "train_dataloader.batch_size": 2})
    config = tmp / "seg.py"
    cfg.dump(str(config))
    module, data = build_task(cfg)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp / "seg.ckpt")
    return tmp / "seg.ckpt", config


def test_the_segmentor_wrapper_gives_the_models_own_logits(seg_ckpt):
    ckpt, config = seg_ckpt
    target = export.load_target(str(config), str(ckpt))
    module = target.model.segmentor
    assert target.kind == "segmentor" and target.info["classes"] == ["sky", "grass", "building",
                                                                     "ball"]
    from lightning_modules.segmentation import SegmentationModule

    reference = SegmentationModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    batch = next(iter(MMDataModule(reference.cfg).val_dataloader()))
    image = batch["inputs"][0]  # uint8 BGR as loaded; the wrapper takes RGB
    with torch.no_grad():
        (sample,) = reference.predict_step({"inputs": [image], "data_samples":
                                            batch["data_samples"][:1]})
        logits = target.model(image.flip(0).float()[None])[0]
    assert module is not reference.model
    torch.testing.assert_close(logits, sample.seg_logits.data, atol=1e-4, rtol=1e-4)


def test_the_detector_wrapper_gives_the_backbone_and_neck_maps(tmp_path):
    make_coco_demo(tmp_path, num_train=2, num_val=1, seed=4)
    data = f"{tmp_path}/coco/"
    cfg = load_config(DET_DEMO, {**_options(data), "val_evaluator.ann_file":
                                 data + "annotations/instances_val2017.json"})
    config = tmp_path / "det.py"
    cfg.dump(str(config))
    target = export.load_target(str(config))
    assert target.kind == "detector-features"
    x = torch.rand(1, 3, 96, 160) * 255  # multiples of 32: no preprocessor padding
    detector = target.model.detector
    with torch.no_grad():
        want = detector.extract_feat(detector.data_preprocessor(
            {"inputs": [x[0].flip(0)], "data_samples": None}, False)["inputs"])
        got = target.model(x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_a_model_that_branches_on_the_size_is_refused_with_the_place(tmp_path):
    class Branchy(nn.Module):
        def forward(self, x):
            if x.shape[-1] > 100:  # specialises the graph on the example's width
                return x * 2
            return x

    target = export.ExportTarget(Branchy(), "classifier", "x", (64, 128))
    with pytest.raises(RuntimeError, match=r"cannot export the classifier as onnx with dynamic "
                                           r"height and width .*\(at forward: if x.shape"):
        export.export_model(target, tmp_path / "b.onnx", "onnx")
