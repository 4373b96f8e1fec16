"""tools/convert_checkpoint.py: a detection checkpoint of this project runs in MMDetection's own
``tools/test.py`` with the same predictions as here; a classifier's loads in timm."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import mmdet
import pytest
import timm
import torch

from lightning_modules.classification import ClassificationModule
from lightning_modules.cli import train_main
from lightning_modules.convert import convert_checkpoint
from lightning_modules.demo_data import make_coco_demo
from lightning_modules.detection import DetectionModule
from lightning_modules.mm_bridge import MMDataModule

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"
MMDET_TEST = Path(mmdet.__file__).parent / ".mim" / "tools" / "test.py"


@pytest.fixture(scope="module")
def det_ckpt(tmp_path_factory) -> Path:
    """A demo detector after 12 training steps (its boxes are then not all alike)."""
    tmp = tmp_path_factory.mktemp("convert")
    make_coco_demo(tmp, num_train=8, num_val=3, seed=2)
    data = f"{tmp}/coco/"
    opts = {f"{s}_dataloader.{k}": v for s in ("train", "val", "test")
            for k, v in (("dataset.data_root", data), ("num_workers", 0),
                         ("persistent_workers", False))}
    ann = data + "annotations/instances_val2017.json"
    opts.update({"val_evaluator.ann_file": ann, "test_evaluator.ann_file": ann,
                 "train_cfg.max_epochs": 6, "train_cfg.val_interval": 6,
                 "train_dataloader.batch_size": 4})
    train_main(DetectionModule, [str(DEMO), "--work-dir", str(tmp / "work"),
                                 "--trainer.accelerator", "cpu",
                                 "--trainer.limit_val_batches", "0",
                                 "--cfg-options", *[f"{k}={v}" for k, v in opts.items()]])
    return tmp / "work" / "checkpoints" / "last.ckpt"


def test_a_detection_checkpoint_runs_in_mmdetections_own_test_tool(det_ckpt, tmp_path):
    out, cfg_out = tmp_path / "det.pth", tmp_path / "det_config.py"
    summary = subprocess.run(
        [sys.executable, "tools/convert_checkpoint.py", str(det_ckpt), str(out),
         "--config-out", str(cfg_out)], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(summary.stdout)["task"] == "mm"
    plain = torch.load(out, weights_only=True)  # tensors and built-ins only
    assert all(not k.startswith("model.") for k in plain["state_dict"])
    assert plain["meta"]["dataset_meta"]["classes"]

    dump = tmp_path / "mmdet_predictions.pkl"
    proc = subprocess.run([sys.executable, str(MMDET_TEST), str(cfg_out), str(out),
                           "--work-dir", str(tmp_path / "mmdet_work"), "--out", str(dump)],
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "coco/bbox_mAP" in proc.stdout + proc.stderr
    with open(dump, "rb") as f:
        theirs = {Path(r["img_path"]).name: r["pred_instances"] for r in pickle.load(f)}

    # The same images through this project's module rebuilt from the Lightning checkpoint.
    module = DetectionModule.load_from_checkpoint(det_ckpt, map_location="cpu").eval()
    loader = MMDataModule(module.cfg).test_dataloader()
    compared = 0
    with torch.no_grad():
        for batch in loader:
            for sample in module.predict_step(batch):
                ref = theirs[Path(sample.img_path).name]
                ours = sample.pred_instances
                assert len(ours) == len(ref["scores"]) > 0
                torch.testing.assert_close(ours.bboxes, ref["bboxes"], atol=1e-3, rtol=1e-4)
                torch.testing.assert_close(ours.scores, ref["scores"], atol=1e-5, rtol=1e-4)
                compared += 1
    assert compared == 3


def test_a_classifier_checkpoint_loads_in_timm(tmp_path):
    kw = dict(embed_dims=[16, 32, 32, 64], num_heads=[1, 1, 1, 2], depths=[1, 1, 1, 1])
    module = ClassificationModule("inline_pvt_tiny", num_classes=5, model_kwargs=kw,
                                  ema_decay=0.5).eval()
    with torch.no_grad():
        for p in module.model_ema.parameters():
            p.add_(0.1)  # EMA weights that differ from the raw ones
    ckpt = tmp_path / "cls.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               ckpt)
    x = torch.randn(2, 3, 64, 64)
    for ema, net in ((False, module.model), (True, module.model_ema.module)):
        out = tmp_path / f"cls_ema{ema}.pth"
        assert convert_checkpoint(ckpt, out, ema=ema)["task"] == "classification"
        model = timm.create_model("inline_pvt_tiny", checkpoint_path=str(out), num_classes=5,
                                  **kw).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), net(x))
    with pytest.raises(ValueError, match="config-out applies to detection"):
        convert_checkpoint(ckpt, tmp_path / "x.pth", config_out=tmp_path / "c.py")


def test_other_files_are_refused_with_the_reason(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="not a Lightning checkpoint of this project"):
        convert_checkpoint(plain, tmp_path / "out.pth")
