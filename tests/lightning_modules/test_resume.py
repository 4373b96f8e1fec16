"""Crash and resume: a real training process killed with SIGKILL mid-epoch resumes from its last
checkpoint, loses only the steps after it, and ends at the step count and schedule position of
an uninterrupted run (segmentation through the MM bridge, and classification). Checkpoint files
are written atomically: a process killed while writing one leaves the previous file intact.

The tests that start processes are ``slow`` (15-40 s each here, imports dominate); the fast
ones simulate the crashes in process, and test_reliability.py resumes an epoch-based run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules.callbacks import SafeCheckpointIO, partial_path
from lightning_modules.demo_data import make_ade_demo, make_imagenet_demo

ROOT = Path(__file__).resolve().parents[2]
SEG_DEMO = ROOT / "configs/demo/fpn_inline-pvt-demo_demo-ade.py"
CLS_DEMO = ROOT / "configs/classification/demo_inline_pvt.yaml"
SMALL = dict(embed_dims=[16, 32, 32, 64], num_heads=[1, 1, 1, 2], mlp_ratios=[2, 2, 2, 2],
             depths=[1, 1, 1, 1], img_size=32, drop_path_rate=0.0)

# The child trains through the real entry point with a module that, once step HANG_AT is done
# (and any checkpoint of that step written), marks a file and sleeps: the parent kills it then,
# so the kill lands at a known step without depending on timing.
HANG = """
import os, sys, time
from pathlib import Path

def hang_after(cls):
    class Hang(cls):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            super().on_train_batch_end(outputs, batch, batch_idx)
            if self.global_step == int(os.environ["HANG_AT"]):
                Path(os.environ["HANG_MARK"]).touch()
                time.sleep(600)
    return Hang
"""
SEG_CHILD = HANG + """
from lightning_modules.cli import train_main
from lightning_modules.segmentation import SegmentationModule
train_main(hang_after(SegmentationModule), sys.argv[1:])
"""
CLS_CHILD = HANG + """
from lightning_modules.classification import (ClassificationCLI, ClassificationModule,
                                               ImageFolderDataModule)
ClassificationCLI(hang_after(ClassificationModule), ImageFolderDataModule, args=sys.argv[1:],
                  save_config_kwargs={"overwrite": True})
"""


def kill_at(code: str, args: list[str], step: int, tmp_path: Path) -> None:
    """Run ``code`` with ``args`` in a new Python process, SIGKILL it once step ``step`` is
    done, and check that it was the kill that ended it."""
    mark, log = tmp_path / "hanging", tmp_path / "child.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "HANG_AT": str(step), "HANG_MARK": str(mark)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not mark.exists():
                assert proc.poll() is None, f"child ended early:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, "child did not reach the step in 300 s"
                time.sleep(0.2)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def step_recorder(cls):
    """``cls`` that records, after every training batch it runs, the global step and the
    learning rate the schedule set for the next step."""
    class Recorded(cls):
        steps: dict[int, float] = {}

        def on_train_batch_end(self, outputs, batch, batch_idx):
            super().on_train_batch_end(outputs, batch, batch_idx)
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            Recorded.steps[self.global_step] = lr
    return Recorded


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- segmentation (MM bridge, iteration-based, checkpoints every 2 steps) ------------------------

@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ade")
    make_ade_demo(root, num_train=6, num_val=2, seed=1)
    return root / "ade" / "ADEChallengeData2016"


def seg_args(ade_root: Path, work: Path) -> list[str]:
    # 6 images in batches of 2: 3 steps per epoch, 8 steps, a checkpoint every 2 steps; warm-up
    # then poly decay by iteration, so the learning rate tells the schedule position.
    opts = {"train_dataloader.batch_size": 2, "train_cfg.max_iters": 8,
            "train_cfg.val_interval": 2, "param_scheduler.0.end": 2,
            "param_scheduler.1.begin": 2, "param_scheduler.1.end": 8}
    for split in ("train", "val", "test"):
        opts.update({f"{split}_dataloader.dataset.data_root": str(ade_root),
                     f"{split}_dataloader.num_workers": 0,
                     f"{split}_dataloader.persistent_workers": False})
    return [str(SEG_DEMO), "--work-dir", str(work), "--trainer.accelerator", "cpu",
            "--trainer.limit_val_batches", "1",
            "--cfg-options", *[f"{k}={v}" for k, v in opts.items()]]


@pytest.mark.slow  # a child process (imports dominate) and two more runs
def test_segmentation_killed_mid_epoch_resumes_like_an_uninterrupted_run(ade_root, tmp_path):
    from lightning_modules.cli import train_main
    from lightning_modules.segmentation import SegmentationModule

    work = tmp_path / "killed"
    kill_at(SEG_CHILD, seg_args(ade_root, work), step=5, tmp_path=tmp_path)  # epoch 1, batch 1
    last = work / "checkpoints" / "last.ckpt"
    assert load(last)["global_step"] == 4  # the newest checkpoint before the kill
    assert not partial_path(last).exists()

    Resumed = step_recorder(SegmentationModule)
    resumed = train_main(Resumed, [*seg_args(ade_root, work), "--resume"])
    assert list(Resumed.steps) == [5, 6, 7, 8]  # only the steps after the checkpoint run again

    Reference = step_recorder(SegmentationModule)
    reference = train_main(Reference, seg_args(ade_root, tmp_path / "reference"))
    assert resumed.global_step == reference.global_step == 8
    assert resumed.current_epoch == reference.current_epoch
    # The schedule is where it would be, step by step (warm-up to 2, poly decay to 0 at 8).
    assert Resumed.steps == {k: Reference.steps[k] for k in (5, 6, 7, 8)}
    assert Reference.steps[8] == 0.0 and Reference.steps[5] > Reference.steps[6] > 0
    states = [[c.scheduler.state_dict() for c in t.lr_scheduler_configs]
              for t in (resumed, reference)]
    for a, b in zip(*states, strict=True):
        assert (a["last_step"], a["_global_step"], a["_last_value"]) == \
               (b["last_step"], b["_global_step"], b["_last_value"])
    # What a third resume would start from: the final checkpoints agree too.
    ends = [load(w / "checkpoints" / "last.ckpt") for w in (work, tmp_path / "reference")]
    assert ends[0]["global_step"] == ends[1]["global_step"] == 8
    assert ends[0]["lr_schedulers"] == ends[1]["lr_schedulers"]


# ---- classification (LightningCLI, epoch checkpoints, per-step cosine schedule) ------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    make_imagenet_demo(root, num_train=12, num_val=4, side_range=(40, 48), seed=3)
    return root / "imagenet"


def cls_args(folder: Path, work: Path, *extra: str) -> list[str]:
    # 12 images in batches of 4: 3 steps per epoch, 3 epochs; last.ckpt after each epoch.
    return ["fit", "-c", str(CLS_DEMO), "--data.data_dir", str(folder),
            "--data.num_workers", "0", "--data.batch_size", "4", "--data.img_size", "32",
            "--model.model_kwargs", yaml.safe_dump(SMALL), "--model.warmup_epochs", "1",
            "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(work),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
            "--checkpoint.dirpath", str(work / "ckpt"), *extra]


@pytest.mark.slow  # a child process (imports dominate) and two more runs
def test_classification_killed_mid_epoch_resumes_like_an_uninterrupted_run(folder, tmp_path):
    from lightning_modules.classification import (
        ClassificationCLI,
        ClassificationModule,
        ImageFolderDataModule,
    )

    work = tmp_path / "killed"
    kill_at(CLS_CHILD, cls_args(folder, work), step=5, tmp_path=tmp_path)  # epoch 1, batch 1
    last = work / "ckpt" / "last.ckpt"
    assert (load(last)["global_step"], load(last)["epoch"]) == (3, 0)  # end of epoch 0

    Resumed = step_recorder(ClassificationModule)
    resumed = ClassificationCLI(Resumed, ImageFolderDataModule,
                                args=cls_args(folder, work, "--ckpt_path", "last"),
                                save_config_kwargs={"overwrite": True}).trainer
    assert list(Resumed.steps) == [4, 5, 6, 7, 8, 9]  # epoch 1 again (4, 5 were lost), 2

    Reference = step_recorder(ClassificationModule)
    reference = ClassificationCLI(Reference, ImageFolderDataModule,
                                  args=cls_args(folder, tmp_path / "reference"),
                                  save_config_kwargs={"overwrite": True}).trainer
    assert resumed.global_step == reference.global_step == 9
    assert resumed.current_epoch == reference.current_epoch
    assert Resumed.steps == {k: Reference.steps[k] for k in range(4, 10)}
    scheds = [t.lr_scheduler_configs[0].scheduler for t in (resumed, reference)]
    assert scheds[0].last_epoch == scheds[1].last_epoch == 9
    assert scheds[0].get_last_lr() == scheds[1].get_last_lr()


# ---- atomic checkpoint files -------------------------------------------------------------------

KILL_WHILE_WRITING = """
import os, signal, sys, torch
from lightning_modules.callbacks import SafeCheckpointIO

io = SafeCheckpointIO()
path = sys.argv[1]
io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)

real_save = torch.save
def save_half_then_die(obj, f, *args, **kwargs):
    # The second checkpoint: half its bytes reach the file, then the process is killed.
    import io as _io
    buf = _io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_half_then_die
io.save_checkpoint({"step": 2, "w": torch.full((1000,), 2.0)}, path)
"""


@pytest.mark.slow  # a child process: 5-20 s of imports here; in process: the next test
def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, str(path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert partial_path(path).stat().st_size > 0  # the half-written file is the partial one
    ckpt = SafeCheckpointIO().load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.ones(1000))
    # The next save replaces the leftover and the old file.
    SafeCheckpointIO().save_checkpoint({"step": 3}, path)
    assert load(path)["step"] == 3 and not partial_path(path).exists()


def test_a_crash_while_writing_or_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = SafeCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    real_save = torch.save

    def half_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise OSError("simulated crash while writing")

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    for name, target, fake in (("while", torch, half_then_crash), ("before", os, crash)):
        monkeypatch.setattr(target, "save" if target is torch else "replace", fake)
        with pytest.raises(OSError, match=f"simulated crash {name}"):
            io.save_checkpoint({"step": 2}, path)
        monkeypatch.undo()
        assert load(path)["step"] == 1
        assert not partial_path(path).exists()  # an exception (unlike a kill) cleans up


def test_a_truncated_checkpoint_is_named_on_resume(tmp_path):
    path = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # as a non-atomic writer killed mid-way leaves it
    with pytest.raises(RuntimeError, match=r"last\.ckpt is truncated or corrupt"):
        SafeCheckpointIO().load_checkpoint(path)
