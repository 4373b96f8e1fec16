"""Two processes on Lightning's DDP (gloo on CPU) against one: same first-step gradients, every
validation sample evaluated once (COCO mAP, mIoU), checkpoints that resume on one or two
processes, and the three training tools under ``--devices 2 --strategy ddp``.

Each case starts real processes (imports dominate), so they are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.demo_data import make_ade_demo, make_coco_demo, make_imagenet_demo

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
pytestmark = pytest.mark.slow


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    make_imagenet_demo(root, num_train=8, num_val=5, side_range=(40, 48), seed=2)
    make_coco_demo(root, num_train=4, num_val=5, seed=2)  # 5: odd, so DDP pads a sample
    make_ade_demo(root, num_train=4, num_val=5, seed=2)
    return root


def test_two_processes_give_the_gradients_of_one_with_the_whole_batch(data, tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    run(str(WORKER), "grads", "1", "8", str(data / "imagenet"), str(one))
    run(str(WORKER), "grads", "2", "4", str(data / "imagenet"), str(two))
    g1, g2 = torch.load(one), torch.load(two)
    assert g1.keys() == g2.keys() and len(g1) > 20
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("task,key", [("det", "coco/bbox_mAP"), ("seg", "mIoU")])
def test_each_validation_sample_is_evaluated_once(data, tmp_path, task, key):
    root = data / "coco" if task == "det" else data / "ade/ADEChallengeData2016"
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"{devices}.json"
        run(str(WORKER), f"eval-{task}", str(devices), str(root), str(out))
        results[devices] = json.loads(out.read_text())
    assert results[2]["world_size"] == 2
    one, two = results[1]["metrics"], results[2]["metrics"]
    assert 0.05 < one[key] < (0.95 if task == "det" else 95.0)  # the fixed predictions' score
    assert one.keys() == two.keys()
    for k in one:
        assert two[k] == pytest.approx(one[k], abs=1e-6), k


def cls_args(data: Path, work: Path, *extra: str) -> list[str]:
    return ["tools/train_cls.py", "fit", "-c", "configs/classification/demo_inline_pvt.yaml",
            "--data.data_dir", str(data / "imagenet"), "--data.num_workers", "0",
            "--data.batch_size", "2", "--data.img_size", "32",
            "--model.model_kwargs", json.dumps({"embed_dims": [16, 32, 32, 64],
                                                "num_heads": [1, 1, 1, 2],
                                                "mlp_ratios": [2, 2, 2, 2],
                                                "depths": [1, 1, 1, 1], "img_size": 32}),
            "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(work),
            "--checkpoint.dirpath", str(work / "ckpt"), *extra]


def test_classification_checkpoint_from_two_processes_resumes_on_one_and_two(data, tmp_path):
    """Epoch 0 on two processes, epoch 1 resumed on one, epoch 2 resumed on two: each resume
    continues from the last epoch and step (8 images, 2 per process per step)."""
    work = tmp_path / "cls"
    last = work / "ckpt" / "last.ckpt"
    step = 0
    for epoch, devices in enumerate((2, 1, 2)):
        ddp = ["--trainer.strategy", "ddp"] if devices == 2 else []
        resume = ["--ckpt_path", str(last)] if epoch else []
        run(*cls_args(data, work, "--trainer.devices", str(devices), *ddp,
                      "--trainer.max_epochs", str(epoch + 1), *resume))
        state = torch.load(last, weights_only=True)
        step += 8 // (2 * devices)
        epochs = state["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"]
        assert (epochs, state["global_step"]) == (epoch + 1, step)
    assert sorted(p.name for p in (work / "ckpt").glob("last*")) == ["last.ckpt"]


@pytest.mark.parametrize("tool,config", [
    ("tools/train_det.py", "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"),
    ("tools/train_seg.py", "configs/demo/fpn_inline-pvt-demo_demo-ade.py"),
])
def test_mm_tools_train_on_two_processes(data, tmp_path, tool, config):
    if "det" in tool:
        root = str(data / "coco") + "/"
        ann = root + "annotations/instances_val2017.json"
        opts = [f"val_evaluator.ann_file={ann}", f"test_evaluator.ann_file={ann}"]
    else:
        root = str(data / "ade/ADEChallengeData2016")
        opts = []
    opts += [f"{s}_dataloader.dataset.data_root={root}" for s in ("train", "val", "test")]
    opts += [f"{s}_dataloader.num_workers=0" for s in ("train", "val", "test")]
    opts += [f"{s}_dataloader.persistent_workers=False" for s in ("train", "val", "test")]
    opts += ["train_dataloader.batch_size=2"]
    work = tmp_path / "work"
    proc = run(tool, config, "--work-dir", str(work), "--trainer.accelerator", "cpu",
               "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "2",
               "--auto-scale-lr", "--cfg-options", *opts)
    ckpt = torch.load(work / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    # The scaling rule, printed at start: total batch 2 processes x 2 images.
    assert "total batch 4" in proc.stdout + proc.stderr
