"""Reliability: resuming an epoch-based MM run puts the schedule where an uninterrupted run has
it; bad data and bad configuration fail early with the file / value and the problem named (or
are skipped when asked); a non-finite loss stops the run naming the step, or skips the step;
linear attention trains under fp16 autocast on inputs whose fp16 evaluation overflows; a fixed
seed gives identical CPU runs; checkpoints load safely unless the user opts in.

(Crash-and-resume with real SIGKILLed processes: test_resume.py.)"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from backbones.attention import GlobalAttention, L2ViTLinearAttention
from heads.classifier import ImageClassifier
from lightning_modules.callbacks import (
    NonFiniteLoss,
    SafeCheckpointIO,
    check_checkpoint_fits,
)
from lightning_modules.cli import train_main
from lightning_modules.data_checks import BadSampleError, CheckedDataset
from lightning_modules.mm_bridge import MMDataModule, build_task, load_config
from lightning_modules.segmentation import SegmentationModule

ROOT = Path(__file__).resolve().parents[2]
SEG_DEMO = ROOT / "configs/demo/fpn_inline-pvt-demo_demo-ade.py"
DET_DEMO = ROOT / "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"
SPLITS = ("train", "val", "test")


def seg_options(data: Path) -> dict:
    ade = data / "ade" / "ADEChallengeData2016"
    opts = {"train_dataloader.batch_size": 2}
    for split in SPLITS:
        opts.update({f"{split}_dataloader.dataset.data_root": str(ade),
                     f"{split}_dataloader.num_workers": 0,
                     f"{split}_dataloader.persistent_workers": False})
    return opts


def det_options(data: Path) -> dict:
    coco = str(data / "coco") + "/"
    opts = {}
    for split in SPLITS:
        opts.update({f"{split}_dataloader.dataset.data_root": coco,
                     f"{split}_dataloader.num_workers": 0,
                     f"{split}_dataloader.persistent_workers": False})
    return opts


def cfg_options(opts: dict) -> list[str]:
    return ["--cfg-options", *[f"{k}={v}" for k, v in opts.items()]]


def recorder(cls):
    """``cls`` recording, after each training batch, the step, the loss and the learning rate
    the schedule set for the next step."""
    class Recorded(cls):
        steps: dict[int, tuple[float, float]] = {}

        def on_train_batch_end(self, outputs, batch, batch_idx):
            super().on_train_batch_end(outputs, batch, batch_idx)
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            Recorded.steps[self.global_step] = (float(outputs["loss"]), lr)
    return Recorded


# ---- resume: an epoch-based MM schedule ----------------------------------------------------------

EPOCH_CFG = """
_base_ = ['{base}']
# 4 images in batches of 2: 2 steps per epoch; warm-up by iteration, steps by epoch. Validation
# every 2 epochs: Lightning then writes the epoch's checkpoint when validation ends, which comes
# before on_train_epoch_end (where the by-epoch steps used to be taken, one epoch too late).
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=3, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3),
    dict(type='MultiStepLR', by_epoch=True, milestones=[1, 2], gamma=0.1),
]
"""


@pytest.fixture(scope="module")
def epoch_runs(demo, tmp_path_factory):
    """An epoch-based run stopped after 2 of its 3 epochs, resumed, and an uninterrupted one."""
    tmp = tmp_path_factory.mktemp("epochs")
    cfg = tmp / "epochs.py"
    cfg.write_text(EPOCH_CFG.format(base=SEG_DEMO))
    args = [str(cfg), "--trainer.accelerator", "cpu", "--trainer.limit_val_batches", "1",
            *cfg_options(seg_options(demo))]
    train_main(SegmentationModule, [*args, "--work-dir", str(tmp / "run"),
                                    "--trainer.max_epochs", "2"])
    stopped = torch.load(tmp / "run/checkpoints/last.ckpt", map_location="cpu",
                         weights_only=True)  # plain torch.load: tensors and built-ins only
    Resumed, Reference = recorder(SegmentationModule), recorder(SegmentationModule)
    resumed = train_main(Resumed, [*args, "--work-dir", str(tmp / "run"), "--resume"])
    reference = train_main(Reference, [*args, "--work-dir", str(tmp / "reference")])
    return dict(cfg=cfg, args=args, stopped=stopped, resumed=resumed, reference=reference,
                resumed_steps=Resumed.steps, reference_steps=Reference.steps, tmp=tmp)


def test_an_epoch_checkpoint_holds_the_schedule_of_its_weights(epoch_runs):
    ckpt = epoch_runs["stopped"]
    assert (ckpt["global_step"], ckpt["epoch"]) == (4, 1)
    warmup, multistep = ckpt["lr_schedulers"]  # saved by Lightning
    # After 2 epochs both milestones have acted: lr 1e-3 (demo) x 0.1 x 0.1, in the scheduler
    # and in the optimizer state that a resumed run starts from.
    assert multistep["last_step"] == 2
    lrs = [g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]]
    assert lrs == pytest.approx([1e-5] * len(lrs))


def test_a_resumed_epoch_run_follows_the_uninterrupted_schedule(epoch_runs):
    resumed, reference = epoch_runs["resumed"], epoch_runs["reference"]
    assert type(resumed.strategy.checkpoint_io) is SafeCheckpointIO
    assert resumed.global_step == reference.global_step == 6
    assert resumed.current_epoch == reference.current_epoch
    assert list(epoch_runs["resumed_steps"]) == [5, 6]  # nothing lost, nothing repeated
    lrs = {k: v[1] for k, v in epoch_runs["reference_steps"].items()}
    assert {k: v[1] for k, v in epoch_runs["resumed_steps"].items()} == {5: lrs[5], 6: lrs[6]}
    # After each epoch's last step a milestone: 1e-3 -> 1e-4 (epoch 1) -> 1e-5 (epoch 2).
    assert lrs[3] == pytest.approx(1e-4) and lrs[4] == lrs[5] == pytest.approx(1e-5)


def test_resuming_another_configs_checkpoint_fails_before_training(epoch_runs):
    Recorded = recorder(SegmentationModule)
    args = [*epoch_runs["args"], "model.backbone.depths=(1,2,1,1)",  # a block more in stage 2
            "--work-dir", str(epoch_runs["tmp"] / "run"), "--resume"]
    with pytest.raises(RuntimeError, match=r"last\.ckpt does not fit this model: .*missing "
                                           r"keys \(model\.backbone\.model\.block2\.1\."):
        train_main(Recorded, args)
    assert not Recorded.steps


def test_check_checkpoint_fits_names_shapes_and_keys():
    small = dict(embed_dims=[16, 32, 32, 64], num_heads=[1, 1, 1, 2], depths=[1, 1, 1, 1])
    ours = ImageClassifier("inline_pvt_tiny", 4, **small)
    other = ImageClassifier("inline_pvt_tiny", 4, **{**small, "embed_dims": [16, 32, 48, 64]})
    check_checkpoint_fits(ours, {"state_dict": ours.state_dict()}, "same")  # no error
    with pytest.raises(RuntimeError, match=r"ckpt X does not fit this model: \d+ shape "
                                           r"mismatches, checkpoint vs model \(backbone\."):
        check_checkpoint_fits(ours, {"state_dict": other.state_dict()}, "ckpt X")


# ---- bad data: MM detection (COCO-style file) ----------------------------------------------------

def coco_json(data: Path, split: str = "train") -> Path:
    return data / "coco" / "annotations" / f"instances_{split}2017.json"


def edit_boxes(path: Path, edits: dict[int, list[float]]) -> list[str]:
    """Set the box of the first annotation of the images at the given indices; returns the
    files of those images."""
    coco = json.loads(path.read_text())
    names = []
    for i, box in edits.items():
        img = coco["images"][i]
        ann = next(a for a in coco["annotations"] if a["image_id"] == img["id"])
        ann["bbox"] = box(img) if callable(box) else box
        names.append(img["file_name"])
    path.write_text(json.dumps(coco))
    return names


def det_data(data: Path, skip: bool = False) -> MMDataModule:
    cfg = load_config(DET_DEMO, {**det_options(data), "skip_bad_samples": skip})
    return MMDataModule(cfg)


def test_bad_boxes_name_the_file_image_and_problem(data):
    negative, outside = edit_boxes(coco_json(data), {
        0: [5.0, 5.0, -2.0, 10.0],
        1: lambda img: [img["width"] - 20.0, 5.0, 40.0, 10.0],  # [x1, y1, x2, y2] by mistake?
    })
    with pytest.raises(BadSampleError) as err:
        det_data(data).dataset("train")
    msg = str(err.value)
    assert "instances_train2017.json: 2 image(s) with bad boxes" in msg
    assert negative in msg and "has a negative size (width -2, height 10" in msg
    assert outside in msg and "reaches outside the" in msg
    assert "skip_bad_samples=True" in msg


def test_boxes_without_area_are_listed_and_left_out_not_errors(data, caplog):
    """Real COCO train2017 holds two height-0 boxes (annotation 918: [296.65, 388.33, 1.03, 0.0],
    area 0). mmdet leaves such annotations out; training goes on, they are named in a warning,
    and their images keep their other boxes."""
    path = coco_json(data)
    clean = det_data(data).dataset("train")
    coco = json.loads(path.read_text())
    img = coco["images"][0]
    anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
    coco["annotations"].append(dict(anns[0], id=918, bbox=[5.0, 8.0, 1.03, 0.0], area=0.0))
    path.write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING):
        train = det_data(data).dataset("train")
    assert len(train) == len(clean)
    assert "1 image(s) with boxes under 1 px or of area 0" in caplog.text
    assert img["file_name"] in caplog.text and "annotation 918" in caplog.text
    index = next(i for i in range(len(train))
                 if train.get_data_info(i)["img_path"].endswith(img["file_name"]))
    assert len(train.get_data_info(index)["instances"]) == len(anns)  # the others kept
    assert train[index]["data_samples"].gt_instances.bboxes.shape[0] == len(anns)


def test_skip_bad_samples_drops_images_with_bad_boxes_from_training_only(data, caplog):
    clean = len(det_data(data).dataset("train"))
    (zero,) = edit_boxes(coco_json(data), {2: [5.0, 5.0, 10.0, -3.0]})
    (val_bad,) = edit_boxes(coco_json(data, "val"), {0: [5.0, 5.0, -1.0, 4.0]})
    with caplog.at_level(logging.WARNING):
        dm = det_data(data, skip=True)
        train = dm.dataset("train")
    assert len(train) == clean - 1  # the bad image is left out, the rest kept
    assert zero in caplog.text and "left out" in caplog.text
    assert all(zero not in train.get_data_info(i)["img_path"] for i in range(len(train)))
    with pytest.raises(BadSampleError, match=val_bad) as err:  # evaluation sets never skip
        dm.dataset("val")
    assert "evaluation data is never skipped" in str(err.value)
    assert "skip_bad_samples=True" not in str(err.value)  # the fix it names is the file


def test_missing_and_corrupt_images_name_the_file_or_are_skipped(data, caplog):
    train = det_data(data).dataset("train")
    first, second = (Path(train.get_data_info(i)["img_path"]) for i in (0, 1))
    first.unlink()
    second.write_bytes(b"\xff\xd8 this is not a JPEG")
    with pytest.raises(BadSampleError, match=f"image file not found: {first}"):
        train[0]
    with pytest.raises(BadSampleError, match=f"cannot read image {second} .*corrupt"):
        train[1]
    with caplog.at_level(logging.WARNING):
        # Built now, the missing image is found and left out before training; the corrupt one
        # is found as it loads and replaced by the next good one.
        skipping = det_data(data, skip=True).dataset("train")
        sample = skipping[0]
    assert len(skipping) == len(train) - 1
    assert Path(sample["data_samples"].img_path) == Path(skipping.get_data_info(1)["img_path"])
    assert f"image file not found: {first}" in caplog.text and str(second) in caplog.text


def test_an_empty_image_list_names_the_annotation_file(data):
    path = coco_json(data)
    coco = json.loads(path.read_text())
    path.write_text(json.dumps({**coco, "images": [], "annotations": []}))
    with pytest.raises(ValueError, match=r"the dataset is empty: no images listed by "
                                         r"ann_file='\S*/instances_train2017\.json'"):
        det_data(data).dataset("train")


def test_too_many_bad_samples_in_a_row_stop_even_when_skipping(data):
    train = det_data(data, skip=True).dataset("train")
    for i in range(len(train)):
        Path(train.get_data_info(i)["img_path"]).unlink()
    with pytest.raises(BadSampleError, match=f"{len(train)} bad samples in a row .* usable"):
        train[0]


def test_pipeline_errors_name_the_sample_files():
    class Broken:
        def get_data_info(self, i):
            return {"img_path": f"s3://bucket/{i}.jpg"}  # not local: no file checks

        def __getitem__(self, i):
            raise KeyError("gt_bboxes")

        def __len__(self):
            return 3

    with pytest.raises(BadSampleError, match=r"sample 1 \(s3://bucket/1\.jpg\) failed in the "
                                             r"data pipeline: KeyError: 'gt_bboxes'"):
        CheckedDataset(Broken())[1]


# ---- bad data: MM segmentation (label maps) ------------------------------------------------------

def seg_data(data: Path, skip: bool = False) -> MMDataModule:
    cfg = load_config(SEG_DEMO, {**seg_options(data), "skip_bad_samples": skip})
    return MMDataModule(cfg)


def test_a_label_map_of_another_size_names_both_files(data, caplog):
    train = seg_data(data).dataset("train")
    info = train.get_data_info(1)
    label = Image.open(info["seg_map_path"])
    w, h = label.size
    label.resize((w + 8, h)).save(info["seg_map_path"])
    with pytest.raises(BadSampleError, match=rf"label map {info['seg_map_path']} is {w + 8} x "
                                             rf"{h} but its image {info['img_path']} is {w} x "
                                             rf"{h}"):
        train[1]
    Path(train.get_data_info(2)["seg_map_path"]).write_bytes(b"\x89PNG broken")
    with pytest.raises(BadSampleError, match="cannot read label map .* .*corrupt"):
        train[2]

    # Training with skip_bad_samples goes on past both, with a warning for each.
    cfg = load_config(SEG_DEMO, {**seg_options(data), "skip_bad_samples": True,
                                 "train_cfg.max_iters": 4, "train_cfg.val_interval": 4})
    trainer = L.Trainer(accelerator="cpu", max_steps=4, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with caplog.at_level(logging.WARNING):
        trainer.fit(*build_task(cfg))
    assert trainer.global_step == 4
    assert info["seg_map_path"] in caplog.text


def test_an_empty_image_folder_is_named(data):
    images = data / "ade" / "ADEChallengeData2016" / "images" / "validation"
    for p in images.iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"the dataset is empty: .* found under "
                                         r"data_prefix=.*images/validation"):
        seg_data(data).dataset("val")


# ---- bad data: classification --------------------------------------------------------------------

def test_classification_bad_images_name_the_file_or_are_skipped(data, caplog):
    from lightning_modules.classification import ImageFolderDataModule

    folder = data / "imagenet"
    kw = dict(batch_size=4, num_workers=0, img_size=32, auto_augment=None, re_prob=0.0)
    dm = ImageFolderDataModule(str(folder), **kw)
    skipping = ImageFolderDataModule(str(folder), skip_bad_samples=True, **kw)
    skipping.dataset("train")  # the file list is read before the files go bad
    samples = dm.dataset("train").samples
    gone, broken = Path(samples[0][0]), Path(samples[5][0])
    gone.unlink()
    broken.write_bytes(b"GIF89a broken")
    with pytest.raises(BadSampleError, match=f"image file not found: {gone}"):
        dm.dataset("train")[0]
    with pytest.raises(ValueError, match=f"cannot read image {broken} .*corrupt"):
        dm.dataset("train")[5]

    with caplog.at_level(logging.WARNING):
        batches = list(skipping.train_dataloader())
    assert [len(y) for _, y in batches] == [4, 4]  # every batch full: bad ones replaced
    assert str(gone) in caplog.text and str(broken) in caplog.text
    bad_val = Path(skipping.dataset("val").samples[0][0])
    bad_val.write_bytes(b"nope")
    with pytest.raises(BadSampleError, match=str(bad_val)):  # evaluation never skips
        list(skipping.val_dataloader())


def test_classification_empty_image_list_is_named(tmp_path):
    from lightning_modules.classification import ImageFolderDataModule

    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    dm = ImageFolderDataModule(str(tmp_path), num_workers=0)
    with pytest.raises(ValueError, match=rf"no images under {tmp_path / 'train'}/<class>/"):
        dm.dataset("train")


def test_a_worker_process_passes_the_named_error_on(data):
    from lightning_modules.classification import ImageFolderDataModule

    dm = ImageFolderDataModule(str(data / "imagenet"), batch_size=2, num_workers=1, img_size=32,
                               auto_augment=None, re_prob=0.0)
    broken = Path(dm.dataset("val").samples[0][0])
    broken.write_bytes(b"nope")
    with pytest.raises(BadSampleError, match=f"cannot read image {broken}"):
        next(iter(dm.val_dataloader()))


# ---- bad configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("option, message", [
    ("model.backbone.arch=huge", "unknown InLinePVTBackbone arch 'huge'"),
    ("model.backbone.out_indices=(0,1,2,4)", r"out_indices \(0, 1, 2, 4\) out of range"),
    ("model.backbone.img_size=16", r"img_size is too small .* stage 4 .* at least 32"),
])
def test_bad_configuration_fails_before_training(demo, tmp_path, option, message):
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=message):
        train_main(SegmentationModule, [str(SEG_DEMO), "--work-dir", str(work),
                                        "--trainer.accelerator", "cpu",
                                        *cfg_options(seg_options(demo)), option])
    assert not (work / "checkpoints").exists()


def test_an_img_size_a_model_cannot_take_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"inline_pvt_tiny: .* stage 4 \(stride 32\) would be "
                                         r"0 x 0; img_size must be at least 32"):
        timm.create_model("inline_pvt_tiny", img_size=24, depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="inline_deit_tiny: .* at least 16"):
        timm.create_model("inline_deit_tiny", img_size=8, depth=1)
    # The smallest that fits still runs, on other sizes too.
    model = timm.create_model("inline_pvt_tiny", img_size=32, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 40)).shape == (1, 1000)


def test_classification_cli_wires_the_guards(demo, tmp_path):
    from lightning_modules.classification import cli_main

    cli = cli_main(["-c", str(ROOT / "configs/classification/demo_inline_pvt.yaml"),
                    "--data.data_dir", str(demo / "imagenet"), "--data.num_workers", "0",
                    "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
                    "--trainer.accelerator", "cpu", "--nonfinite_loss.action", "skip"],
                   run=False)
    (guard,) = [c for c in cli.trainer.callbacks if isinstance(c, NonFiniteLoss)]
    assert guard.action == "skip"
    assert type(cli.trainer.strategy.checkpoint_io) is SafeCheckpointIO
    with pytest.raises(ValueError, match="unknown model 'inline_pvt_huge'"):
        cli_main(["-c", str(ROOT / "configs/classification/demo_inline_pvt.yaml"),
                  "--data.data_dir", str(demo / "imagenet"), "--model.model_name",
                  "inline_pvt_huge", "--trainer.default_root_dir", str(tmp_path)], run=False)


# ---- non-finite losses ---------------------------------------------------------------------------

class Regression(L.LightningModule):
    """y = x w on fixed data; the loss is NaN at the 1-based steps in ``nan_at``."""

    def __init__(self, nan_at=(), accumulate: int = 1):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4))
        self.nan_at, self.accumulate = set(nan_at), accumulate
        self.weights: dict[int, torch.Tensor] = {0: self.w.detach().clone()}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(x @ self.w, y)
        micro = batch_idx % self.accumulate == 0  # first micro-batch of the step
        if micro and self.global_step + 1 in self.nan_at:
            loss = loss * float("nan")
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.weights[self.global_step] = self.w.detach().clone()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16, 4, generator=g)
        return torch.utils.data.DataLoader(list(zip(x, x @ torch.arange(4.0), strict=True)),
                                           batch_size=2)


def fit(module, guard, steps: int = 6, **kw) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[guard], **kw)
    trainer.fit(module)
    return trainer


def test_a_non_finite_loss_stops_the_run_naming_the_step():
    module = Regression(nan_at={3})
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at step 3 "
                                                 r"\(epoch 0, batch 2; 2 steps done\)"):
        fit(module, NonFiniteLoss())
    assert torch.equal(module.w.detach(), module.weights[2])  # the bad step changed nothing


def test_skipping_a_non_finite_loss_leaves_the_weights_and_goes_on():
    module = Regression(nan_at={3})
    guard = NonFiniteLoss("skip")
    trainer = fit(module, guard)
    assert trainer.global_step == 6 and guard.skipped_steps == [3]
    assert torch.equal(module.weights[3], module.weights[2])
    assert not torch.equal(module.weights[4], module.weights[3])  # learning resumed
    # Under gradient accumulation a NaN micro-batch spoils the whole step.
    module = Regression(nan_at={2}, accumulate=2)
    guard = NonFiniteLoss("skip")
    fit(module, guard, steps=4, accumulate_grad_batches=2)
    assert guard.skipped_steps == [2] and torch.equal(module.weights[2], module.weights[1])
    # A run that keeps producing NaN has diverged: skipping stops after a while.
    with pytest.raises(FloatingPointError, match="3 steps in a row: the run has diverged"):
        fit(Regression(nan_at={2, 3, 4, 5}), NonFiniteLoss("skip", max_consecutive_skips=2))


def test_the_mm_train_tool_stops_on_a_non_finite_loss(demo, tmp_path):
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at step 1 "):
        train_main(SegmentationModule, [
            str(SEG_DEMO), "--work-dir", str(tmp_path), "--trainer.accelerator", "cpu",
            *cfg_options({**seg_options(demo), "model.decode_head.loss_decode.loss_weight": "nan",
                          "train_cfg.max_iters": 2})])


# ---- fp16 autocast on large-magnitude inputs -----------------------------------------------------

class Tiny(torch.nn.Module):
    """Tokens -> linear embedding -> one linear-attention layer (no norm in front: it sees the
    inputs' magnitude) with a residual -> mean -> 4 classes."""

    def __init__(self, kind: str, dim: int = 32, heads: int = 2):
        super().__init__()
        self.kind, self.heads = kind, heads
        self.embed = torch.nn.Linear(8, dim)
        self.attn = (L2ViTLinearAttention(dim, heads) if kind == "l2vit" else
                     GlobalAttention(dim, heads, mode=kind))
        self.head = torch.nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        t = t + (self.attn(t) if self.kind == "l2vit" else self.attn(t, (8, 8)))
        return self.head(t.mean(1))


def kernel_in(dtype, kind, q, k, v, temperature=None):
    """The kernels' formulas (REFERENCE.md) evaluated plainly in ``dtype``, reductions too."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    n, d = k.shape[-2], k.shape[-1]
    if kind == "inline":
        s = d ** -0.5
        f = math.sqrt(s / n)
        kv = (k * f).transpose(-2, -1) @ (v * f)
        return q @ kv + (1 - s * (q @ k.mean(-2, keepdim=True).transpose(-2, -1))) * \
            v.mean(-2, keepdim=True)
    q, k = F.relu(q), F.relu(k)
    denom = q @ k.sum(-2, keepdim=True).transpose(-2, -1)
    if kind == "linear":
        return (q @ (k.transpose(-2, -1) @ v)) / (denom + 1e-6)
    return (q @ (k.transpose(-2, -1) @ v)) * temperature.to(dtype) / denom.clamp(min=100)


@pytest.mark.parametrize("kind", ["inline", "linear", "l2vit"])
def test_linear_attention_trains_under_fp16_autocast_on_large_inputs(kind):
    torch.manual_seed(0)
    model = Tiny(kind)
    # Tokens around 200 (a large offset, as un-normalised or drifted activations), with a
    # class-dependent feature: 8 samples of 64 tokens.
    y = torch.arange(8) % 4
    x = torch.randn(8, 64, 8) + 200.0
    x[torch.arange(8), :, y] += 20.0

    # These magnitudes overflow the kernel evaluated in fp16 (K^T V, q . mean K, row sums),
    # while the kernel as implemented (fp32 state) matches an fp64 evaluation.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        qkv = model.attn.qkv(model.embed(x))
        q, k, v = (t.unflatten(-1, (model.heads, -1)).transpose(1, 2) for t in qkv.chunk(3, -1))
    temp = getattr(model.attn, "temperature", None)
    assert not torch.isfinite(kernel_in(torch.float16, kind, q, k, v, temp)).all()
    exact = kernel_in(torch.float64, kind, q, k, v, temp)
    from backbones import attention as A
    with torch.autocast("cpu", dtype=torch.float16):
        ours = {"inline": lambda: A.injective_linear_attention(q, k, v, model.attn.scale),
                "linear": lambda: A.plain_linear_attention(F.relu(q), F.relu(k), v),
                "l2vit": lambda: A.l2vit_linear_attention(q, k, v, temp)}[kind]()
    assert ours.dtype == torch.float16 and torch.isfinite(ours).all()
    assert (ours.double() - exact).abs().max() <= 0.02 * exact.abs().max()

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    losses, skipped = [], 0
    for _ in range(300):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        assert torch.isfinite(loss), f"step {len(losses)}: loss {loss}"
        losses.append(loss.item())
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        skipped += scaler.get_scale() < scale  # the scaler skips steps with inf gradients
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert skipped <= 20  # the scaler finding its scale, not a run of skipped steps
    assert np.mean(losses[-50:]) < 0.1 * losses[0]


# ---- determinism ---------------------------------------------------------------------------------

def test_a_fixed_seed_gives_identical_cpu_runs(demo, tmp_path):
    def run(seed: int, name: str) -> list[float]:
        Recorded = recorder(SegmentationModule)
        train_main(Recorded, [str(SEG_DEMO), "--work-dir", str(tmp_path / name),
                              "--trainer.accelerator", "cpu", "--seed", str(seed),
                              *cfg_options({**seg_options(demo), "train_cfg.max_iters": 3,
                                            "train_cfg.val_interval": 3}),
                              "--trainer.limit_val_batches", "0"])
        return [loss for loss, _ in Recorded.steps.values()]

    first, second = run(0, "a"), run(0, "b")
    assert len(first) == 3 and first == second  # bit for bit
    assert run(1, "c") != first  # the seed is what makes them equal


# ---- safe loading --------------------------------------------------------------------------------

def test_checkpoints_load_with_weights_only_unless_the_user_opts_in(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    plain = tmp_path / "plain.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "meta": {"epoch": np.int64(3)}},
                       plain)
    assert int(io.load_checkpoint(plain)["meta"]["epoch"]) == 3  # numpy values are data

    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)},
               pickled)
    with pytest.raises(RuntimeError, match=r"pickled\.ckpt holds Python objects .* "
                                           r"LAV_TRUSTED_CHECKPOINTS=1"):
        io.load_checkpoint(pickled)
    assert io.load_checkpoint(pickled, weights_only=False)["args"].lr == 0.1  # explicit opt-in
    model = ImageClassifier("inline_pvt_tiny", 4, depths=[1, 1, 1, 1])
    torch.save({"model": model.timm_state_dict(), "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(RuntimeError, match="LAV_TRUSTED_CHECKPOINTS=1"):
        model.load_pretrained(pickled)
    monkeypatch.setenv("LAV_TRUSTED_CHECKPOINTS", "1")
    assert io.load_checkpoint(pickled)["args"].lr == 0.1
    assert model.load_pretrained(pickled) == []
