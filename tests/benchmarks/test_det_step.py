"""The det-step comparison of tools/benchmark.py: both trainers run the same timing config."""

from pathlib import Path

import pytest

from benchmarks import det_step as DB
from lightning_modules.demo_data import make_coco_demo
from lightning_modules.mm_bridge import load_config

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"


def test_timing_config_and_intervals(tmp_path):
    cfg = DB._timing_config(load_config(DEMO), 7, str(tmp_path))
    assert cfg.train_cfg == dict(type="IterBasedTrainLoop", max_iters=7, val_interval=10 ** 9)
    assert cfg.param_scheduler == [] and cfg.val_dataloader is None and cfg.val_cfg is None
    assert cfg.default_hooks.checkpoint is None and "visualization" not in cfg.default_hooks
    assert cfg.visualizer.vis_backends == [] and cfg.work_dir == str(tmp_path)
    assert cfg.model == load_config(DEMO).model  # the model and data are untouched
    assert DB._intervals([0.0, 1.0, 3.0, 6.0], warmup=1) == [2.0, 3.0]


def test_runner_and_lightning_both_train(tmp_path):
    make_coco_demo(tmp_path, num_train=8, num_val=2, seed=1)
    data = str(tmp_path / "coco") + "/"
    rec = DB.compare_det_step(DEMO, iters=2, warmup=1, rounds=1, log=lambda _: None,
                              cfg_options={"train_dataloader.dataset.data_root": data,
                                           "train_dataloader.num_workers": 0,
                                           "train_dataloader.persistent_workers": False})
    assert len(rec["mmengine_runner_all_s"]) == len(rec["lightning_all_s"]) == 2
    assert rec["ratio_lightning_over_runner"] == pytest.approx(
        rec["lightning_s_per_iter"] / rec["mmengine_runner_s_per_iter"])
