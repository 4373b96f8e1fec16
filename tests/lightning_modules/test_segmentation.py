"""Segmentation through the MM bridge: labels, evaluation on known answers, one step, learning,
the tools, inference pictures, and whole-image versus sliding-window inference at 1024 x 2048."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from lightning_modules import cli
from lightning_modules.demo_data import DEMO_SEG_CLASSES, make_ade_demo
from lightning_modules.mm_bridge import MMDataModule, build_task, load_config, trainer_settings
from lightning_modules.segmentation import SegmentationModule

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs/demo/fpn_inline-pvt-demo_demo-ade.py"
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_ade_demo(root, num_train=8, num_val=4, seed=1)
    return root / "ade" / "ADEChallengeData2016"


def data_options(ade_root: Path) -> dict:
    """Point the demo config at the generated data; no worker processes in tests."""
    opts = {}
    for split in SPLITS:
        opts.update({f"{split}_dataloader.dataset.data_root": str(ade_root),
                     f"{split}_dataloader.num_workers": 0,
                     f"{split}_dataloader.persistent_workers": False})
    return opts


def demo_cfg(ade_root: Path, **options) -> Config:
    return load_config(DEMO, {**data_options(ade_root), **options})


def trainer(cfg: Config | None = None, **kw) -> L.Trainer:
    """A quiet CPU Trainer with the config's run length, as the tools build it."""
    settings = trainer_settings(cfg) if cfg is not None else {}
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     **{**settings, **kw})


def labels(ade_root: Path, folder: str) -> list[np.ndarray]:
    """The annotation PNGs as written (0 = other, 1..K), in file-name order."""
    return [np.asarray(Image.open(p)) for p in
            sorted((ade_root / "annotations" / folder).glob("*.png"))]


# ---- config and data ---------------------------------------------------------------------------

def test_demo_classes_match_the_generator():
    cfg = Config.fromfile(str(DEMO), import_custom_modules=False)
    assert tuple(cfg.classes) == DEMO_SEG_CLASSES
    assert cfg.model.decode_head.num_classes == len(DEMO_SEG_CLASSES)
    assert len(cfg.palette) == len(DEMO_SEG_CLASSES)


def test_demo_labels_follow_the_ade_convention(ade_root):
    """0 ('other') becomes 255 (ignored) and class k becomes k - 1, with no remapping by a
    150-class ADE20K label map (which ADE20KDataset would apply to these class names)."""
    data = MMDataModule(demo_cfg(ade_root))
    dataset = data.dataset("val")
    assert dataset.metainfo["classes"] == DEMO_SEG_CLASSES
    raw = labels(ade_root, "validation")
    assert len(dataset) == len(raw) == 4
    for i, png in enumerate(raw):
        gt = dataset[i]["data_samples"].gt_sem_seg.data[0].numpy()
        expected = np.where(png == 0, 255, png.astype(np.int64) - 1)
        np.testing.assert_array_equal(gt, expected)


def test_missing_data_root_names_the_fix(tmp_path):
    cfg = load_config(DEMO, {"val_dataloader.dataset.data_root": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="val_dataloader.dataset.data_root=PATH"):
        MMDataModule(cfg).dataset("val")


# ---- evaluation on known answers ----------------------------------------------------------------

@pytest.mark.parametrize("answer", ["ground_truth", "all_grass"])
def test_evaluation_on_known_predictions(ade_root, answer):
    """IoUMetric through the bridge (dataset meta, collection, logging) on predictions whose
    scores are computed here from the PNG files: ground truth gives 100; predicting 'grass'
    everywhere gives IoU(grass) = grass pixels / labelled pixels and 0 for the other classes."""
    cfg = demo_cfg(ade_root)
    module, data = build_task(cfg)
    grass = DEMO_SEG_CLASSES.index("grass")

    def predict(inputs, data_samples):
        for s in data_samples:
            gt = s.gt_sem_seg.data
            pred = gt.clone() if answer == "ground_truth" else torch.full_like(gt, grass)
            s.set_data({"pred_sem_seg": type(s.gt_sem_seg)(data=pred)})
        return data_samples

    module.model.predict = predict
    metrics = trainer(cfg).validate(module, datamodule=data)
    metrics = metrics[0]
    if answer == "ground_truth":
        assert metrics["mIoU"] == pytest.approx(100.0)
        assert metrics["aAcc"] == pytest.approx(100.0)
        return
    pixels = np.concatenate([p.ravel() for p in labels(ade_root, "validation")])
    labelled = pixels[pixels > 0]
    grass_share = float(np.mean(labelled == grass + 1))
    # A class neither labelled nor predicted has no IoU (NaN, left out of the mean).
    present = len(np.unique(labelled))
    assert metrics["aAcc"] == pytest.approx(100 * grass_share, abs=0.01)
    assert metrics["mIoU"] == pytest.approx(100 * grass_share / present, abs=0.01)
    assert metrics["mAcc"] == pytest.approx(100 / present, abs=0.01)


# ---- training ----------------------------------------------------------------------------------

def test_one_training_step_then_evaluation(ade_root):
    # SyncBN in the head (as in the recipes) must be reverted to BN for a CPU run.
    cfg = demo_cfg(ade_root, **{"train_cfg.max_iters": 1, "train_cfg.val_interval": 1,
                                "train_dataloader.batch_size": 2,
                                "model.decode_head.norm_cfg.type": "SyncBN"})
    module, data = build_task(cfg)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())
    t = trainer(cfg, num_sanity_val_steps=0)
    t.fit(module, datamodule=data)
    assert t.global_step == 1
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())
    for key in ("mIoU", "mAcc", "aAcc", "train/loss", "train/decode.loss_ce"):
        assert key in t.callback_metrics and torch.isfinite(t.callback_metrics[key]), key
    assert 0.0 <= float(t.callback_metrics["mIoU"]) <= 100.0


def test_loss_falls_over_a_short_run(ade_root):
    # No flips, the config's lr without its warm-up: 20 steps must show learning.
    cfg = demo_cfg(ade_root, **{"train_dataloader.dataset.pipeline.4.prob": 0.0,
                                "train_dataloader.batch_size": 4, "param_scheduler": []})
    torch.manual_seed(0)
    module, data = build_task(cfg)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    t = trainer(cfg, max_steps=20, limit_val_batches=0, callbacks=[Record()])
    t.fit(module, datamodule=data)
    assert len(losses) == 20
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.6 * first, (first, last)


def test_tools_train_test_and_draw(ade_root, tmp_path):
    """train_main writes checkpoints and logs with mIoU; test_main prints the metrics of the
    checkpoint; infer draws one picture per image at the image's size."""
    opts = [f"{k}={v}" for k, v in {**data_options(ade_root), "train_cfg.max_iters": 2,
                                     "train_cfg.val_interval": 2,
                                     "train_dataloader.batch_size": 2}.items()]
    # Started from a pretrained backbone file (init_cfg); config file and pretrained file are
    # deleted after training.
    pretrained, config = tmp_path / "backbone.pth", tmp_path / "seg_config.py"
    backbone = build_task(demo_cfg(ade_root))[0].model.backbone.model
    torch.save({"state_dict": {k: v + 0.01 for k, v in backbone.state_dict().items()}},
               pretrained)
    cfg = demo_cfg(ade_root)
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(pretrained))
    cfg.dump(str(config))
    work = tmp_path / "work"
    trained = cli.train_main(SegmentationModule, [
        str(config), "--work-dir", str(work), "--trainer.accelerator", "cpu",
        "--cfg-options", *opts]).lightning_module.eval()
    ckpt = work / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (work / "checkpoints" / "iter_2.ckpt").is_file()
    pretrained.unlink()
    config.unlink()
    # The checkpoint alone rebuilds the module (config, class names, weights), without the
    # config file or the pretrained file: same logits.
    restored = SegmentationModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    assert tuple(restored.dataset_meta["classes"]) == DEMO_SEG_CLASSES
    batch = next(iter(MMDataModule(restored.cfg).val_dataloader()))
    with torch.no_grad():
        a, b = trained.predict_step(batch), restored.predict_step(batch)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.seg_logits.data, y.seg_logits.data)
    (csv,) = (work / "csv").rglob("metrics.csv")
    assert {"mIoU", "mAcc", "aAcc"} <= set(csv.read_text().splitlines()[0].split(","))

    metrics = cli.test_main(SegmentationModule, [str(DEMO), str(ckpt),
                                                 "--trainer.accelerator", "cpu",
                                                 "--cfg-options", *opts])
    assert {"mIoU", "mAcc", "aAcc"} <= set(metrics)

    from lightning_modules.inference import infer

    images = sorted(str(p) for p in (ade_root / "images" / "validation").glob("*.jpg"))[:2]
    cfg_path = tmp_path / "cfg.py"
    demo_cfg(ade_root).dump(str(cfg_path))
    outs = infer(cfg_path, ckpt, images, tmp_path / "pics")
    assert [o.name for o in outs] == [Path(p).name for p in images]
    for out, image in zip(outs, images, strict=True):
        drawn, original = Image.open(out), Image.open(image)
        assert drawn.size == original.size
        # An overlay, not a copy: the class colours are blended in.
        diff = np.abs(np.asarray(drawn, dtype=np.int16) - np.asarray(original, dtype=np.int16))
        assert diff.mean() > 10


# ---- inference modes ---------------------------------------------------------------------------

TINY = {"model.backbone.embed_dims": (16, 32, 64, 128), "model.backbone.num_heads": (1, 1, 2, 4),
        "model.neck.in_channels": [16, 32, 64, 128], "model.neck.out_channels": 16,
        "model.decode_head.in_channels": [16] * 4, "model.decode_head.channels": 16}


def test_test_mode_arguments_are_checked():
    module = SegmentationModule(load_config(DEMO, TINY))
    assert module.test_mode == "whole"
    with pytest.raises(ValueError, match="needs crop_size and stride"):
        module.set_test_mode("slide", crop_size=64)
    with pytest.raises(ValueError, match="would leave gaps"):
        module.set_test_mode("slide", crop_size=64, stride=96)
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        module.set_test_mode("tiles", crop_size=64, stride=64)
    with pytest.raises(ValueError, match="crop_size must be"):
        module.set_test_mode("slide", crop_size=(64, 0), stride=32)
    module.set_test_mode("slide", crop_size=(64, 96), stride=32)
    assert module.test_mode == "slide"
    assert module.model.test_cfg.crop_size == (64, 96)
    assert module.model.test_cfg.stride == (32, 32)


def test_slide_and_whole_inference_at_1024x2048():
    """A tiny InLine-PVT Semantic FPN on a 1024 x 2048 image (8x the training crop's side).

    Global InLine attention sees the whole image in 'whole' mode but only the window in
    'slide' mode, so the two agree only where the windows make them: (1) a window covering
    the whole image is whole-image inference; (2) in general, each pixel's logits are the mean
    of the whole-image logits of the windows that contain it. (2) is checked against windows
    listed by hand, half-overlapping along the width and tiling the height."""
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    module = SegmentationModule(load_config(DEMO, TINY)).eval()
    h, w, k = 1024, 2048, len(DEMO_SEG_CLASSES)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    image = torch.stack([255 * yy, 255 * xx, 128 + 100 * torch.sin(20 * xx * yy)])
    image = (image + 20 * torch.randn(3, h, w)).clamp(0, 255).to(torch.uint8)

    def predict(img: torch.Tensor) -> SegDataSample:
        shape = tuple(img.shape[-2:])
        sample = SegDataSample(metainfo=dict(ori_shape=shape, img_shape=shape))
        with torch.no_grad():
            (out,) = module.predict_step({"inputs": [img], "data_samples": [sample]})
        return out

    whole = predict(image)
    assert tuple(whole.seg_logits.data.shape) == (k, h, w)
    assert tuple(whole.pred_sem_seg.data.shape) == (1, h, w)
    assert whole.pred_sem_seg.data.unique().numel() > 1  # not a constant map

    module.set_test_mode("slide", crop_size=(h, w), stride=(512, 512))
    covering = predict(image)
    torch.testing.assert_close(covering.seg_logits.data, whole.seg_logits.data)

    crop = (512, 1024)
    module.set_test_mode("slide", crop_size=crop, stride=(512, 512))
    slide = predict(image)
    assert tuple(slide.seg_logits.data.shape) == (k, h, w)
    assert tuple(slide.pred_sem_seg.data.shape) == (1, h, w)

    total, count = torch.zeros(k, h, w), torch.zeros(1, h, w)
    module.set_test_mode("whole")
    for y in (0, 512):
        for x in (0, 512, 1024):
            window = image[:, y:y + crop[0], x:x + crop[1]]
            total[:, y:y + crop[0], x:x + crop[1]] += predict(window).seg_logits.data
            count[:, y:y + crop[0], x:x + crop[1]] += 1
    assert count.min() == 1 and count.max() == 2
    torch.testing.assert_close(slide.seg_logits.data, total / count, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(slide.pred_sem_seg.data, slide.seg_logits.data.argmax(0, True))
    # Not vacuous: with global attention, windows do change the answer.
    assert (slide.seg_logits.data - whole.seg_logits.data).abs().max() > 1e-3
