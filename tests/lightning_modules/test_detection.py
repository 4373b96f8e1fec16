"""Detection through the MM bridge: registration, one step, evaluation, learning, inference."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch
from mmengine.config import Config
from PIL import Image

import heads.mm_backbones as mm
import heads.mm_necks as necks
from lightning_modules.cli import train_main
from lightning_modules.demo_data import DEMO_DET_CLASSES, make_coco_demo
from lightning_modules.detection import DetectionModule
from lightning_modules.mm_bridge import build_task, load_config, trainer_settings

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_coco_demo(root, num_train=12, num_val=6, seed=1)
    return root / "coco"


def demo_cfg(coco_root: Path, **options) -> Config:
    data = str(coco_root) + "/"
    opts = {
        "train_dataloader.dataset.data_root": data,
        "val_dataloader.dataset.data_root": data,
        "test_dataloader.dataset.data_root": data,
        "val_evaluator.ann_file": data + "annotations/instances_val2017.json",
        "test_evaluator.ann_file": data + "annotations/instances_val2017.json",
        "train_dataloader.num_workers": 0, "val_dataloader.num_workers": 0,
        "test_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False,
        "val_dataloader.persistent_workers": False,
        "test_dataloader.persistent_workers": False,
    }
    opts.update(options)
    return load_config(DEMO, opts)


@pytest.fixture
def mm_log():
    """Messages sent to mmengine's current logger (it keeps its own stream handlers)."""
    import logging

    from mmengine.logging import MMLogger

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def trainer(cfg: Config | None = None, **kw) -> L.Trainer:
    """A quiet CPU Trainer with the config's run length, as the tools build it."""
    settings = trainer_settings(cfg) if cfg is not None else {}
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     **{**settings, **kw})


# ---- registration --------------------------------------------------------------------------

def test_demo_classes_match_the_generator():
    assert tuple(Config.fromfile(str(DEMO)).classes) == DEMO_DET_CLASSES


def test_pretrained_init_loads_classification_weights_and_reports_keys(tmp_path, mm_log):
    src = timm.create_model("inline_pvt_tiny", depths=(1, 1, 1, 1), num_classes=5)
    ckpt = tmp_path / "cls.pth"
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, ckpt)
    backbone = mm.InLinePVTBackbone(arch="tiny", depths=(1, 1, 1, 1),
                            init_cfg=dict(type="Pretrained", checkpoint=str(ckpt)))
    backbone.init_weights()
    for name, p in backbone.model.state_dict().items():
        torch.testing.assert_close(p, src.state_dict()[name])
    out = "\n".join(mm_log)
    assert "loaded" in out and "missing keys" not in out and "unexpected" not in out
    feats = backbone(torch.randn(1, 3, 70, 90))
    assert [f.shape[1] for f in feats] == [64, 128, 320, 512]
    assert [f.shape[-2:] for f in feats] == [(18, 23), (9, 12), (5, 6), (3, 3)]


def test_pretrained_init_reports_missing_keys(tmp_path, mm_log):
    sd = timm.create_model("inline_pvt_tiny", depths=(1, 1, 1, 1)).state_dict()
    del sd["block2.0.attn.q.weight"]
    sd["extra.weight"] = torch.zeros(1)
    ckpt = tmp_path / "partial.pth"
    torch.save(sd, ckpt)
    mm.InLinePVTBackbone(arch="tiny", depths=(1, 1, 1, 1),
                 init_cfg=dict(type="Pretrained", checkpoint=str(ckpt))).init_weights()
    out = "\n".join(mm_log)
    assert "missing keys" in out and "block2.0.attn.q.weight" in out
    assert "unexpected keys" in out and "extra.weight" in out


def test_pretrained_init_reports_a_checkpoint_of_another_variant(tmp_path):
    other = timm.create_model("inline_pvt_tiny", embed_dims=(32, 64, 128, 256),
                              num_heads=(1, 2, 4, 8), depths=(1, 1, 1, 1))
    ckpt = tmp_path / "other.pth"
    torch.save(other.state_dict(), ckpt)
    backbone = mm.InLinePVTBackbone(arch="tiny", depths=(1, 1, 1, 1),
                            init_cfg=dict(type="Pretrained", checkpoint=str(ckpt)))
    with pytest.raises(RuntimeError, match="does not match"):
        backbone.init_weights()


def test_backbone_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown InLineSwinBackbone arch 'huge'"):
        mm.InLineSwinBackbone(arch="huge")
    with pytest.raises(ValueError, match="out_indices .* out of range"):
        mm.L2ViTBackbone(arch="tiny", out_indices=(0, 4))


def test_frozen_stages_freeze_stem_and_first_stages():
    b = mm.InLineSwinBackbone(arch="tiny", depths=(1, 1, 1, 1), frozen_stages=1)
    b.train()
    grads = {n: p.requires_grad for n, p in b.model.named_parameters()}
    assert not grads["patch_embed.proj.weight"]
    assert not any(v for n, v in grads.items() if n.startswith("layers.0."))
    assert all(v for n, v in grads.items() if n.startswith(("layers.1.", "layers.2.")))
    assert not b.model.layers[0].training and b.model.layers[1].training


@pytest.mark.parametrize("family", ["InLinePVTBackbone", "InLineSwinBackbone", "L2ViTBackbone",
                                    "InLineDeiTBackbone"])
def test_maps_reach_roi_align_as_dense_nchw(family):
    """mmcv's RoIAlign reads its input as dense NCHW whatever its strides: channels-last maps
    (what token layouts and LayerNorm2d give) came out scrambled, and Mask R-CNN's RoI heads
    could not learn. Every map handed to MM must be contiguous, and RoIAlign on it must equal a
    bilinear resampling computed here with torch (grid_sample) from the same map."""
    from mmcv.ops import RoIAlign

    small = (dict(depths=(1, 1, 1, 1)) if family != "InLineDeiTBackbone"
             else dict(depth=2, out_indices=(1,)))
    backbone = getattr(mm, family)(arch="tiny", **small)
    feats = backbone(torch.randn(1, 3, 96, 128))
    if family == "InLineDeiTBackbone":
        feats = necks.SimplePyramidNeck(in_channels=192, out_channels=16)(feats)
    assert all(f.is_contiguous() for f in feats)
    f = feats[0]
    # One RoI sampled at 1 x 1 bin centres = bilinear lookups at known points (aligned=True:
    # pixel centres at +0.5, hence the -0.5 shift into grid_sample's align_corners=False frame).
    x0, y0, x1, y1 = 3.0, 2.0, 11.0, 9.0
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=1, aligned=True)(
        f, torch.tensor([[0.0, x0, y0, x1, y1]]))
    h, w = f.shape[-2:]
    xs = torch.tensor([x0 + (x1 - x0) * 0.25, x0 + (x1 - x0) * 0.75]) - 0.5
    ys = torch.tensor([y0 + (y1 - y0) * 0.25, y0 + (y1 - y0) * 0.75]) - 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([(gx + 0.5) / w * 2 - 1, (gy + 0.5) / h * 2 - 1], -1)[None]
    ref = torch.nn.functional.grid_sample(f, grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_simple_pyramid_neck_for_deit():
    backbone = mm.InLineDeiTBackbone(arch="tiny", depth=4, out_indices=(0, 1, 2, 3))
    neck = necks.SimplePyramidNeck(in_channels=192, out_channels=32)
    feats = neck(backbone(torch.randn(1, 3, 100, 130)))  # stride-16 grid 7 x 9
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 28, 36), (32, 14, 18), (32, 7, 9),
                                                   (32, 4, 5)]


# ---- the Lightning bridge --------------------------------------------------------------------

def test_parameter_groups_and_schedule_follow_the_config(coco_root):
    cfg = demo_cfg(coco_root)
    module, data = build_task(cfg)
    t = trainer(cfg, max_steps=3, limit_val_batches=0)
    t.fit(module, datamodule=data)
    opt = t.optimizers[0]
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    params = dict(module.model.named_parameters())
    assert decay[id(params["backbone.model.pos_embed1"])] == 0.0
    assert decay[id(params["backbone.model.block1.0.norm1.weight"])] == 0.0
    assert decay[id(params["backbone.model.block1.0.attn.q.weight"])] == pytest.approx(0.05)
    # LinearLR after 3 iterations: mmengine reaches the end factor at iteration end - 1, so the
    # ramp spans end - 1 steps; the epoch-based MultiStepLR has not acted yet.
    warmup, lr = cfg.param_scheduler[0], cfg.optim_wrapper.optimizer.lr
    assert warmup.type == "LinearLR" and not warmup.by_epoch
    start = warmup.start_factor
    expected = lr * (start + (1 - start) * 3 / (warmup.end - 1))
    assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-6)


def test_ground_truth_as_predictions_scores_map_one(coco_root):
    """The evaluation wiring (dataset meta, rescaling, collection) on known answers."""
    cfg = demo_cfg(coco_root)
    module, data = build_task(cfg)

    def predict_ground_truth(inputs, data_samples, rescale=True):
        for s in data_samples:
            gt = s.gt_instances
            s.pred_instances = gt.clone()
            s.pred_instances.scores = torch.ones(len(gt))
            s.pred_instances.masks = gt.masks.to_tensor(torch.bool, "cpu")
        return data_samples

    module.model.predict = predict_ground_truth
    metrics = trainer(cfg).validate(module, datamodule=data)[0]
    assert metrics["coco/bbox_mAP"] == pytest.approx(1.0)
    assert metrics["coco/segm_mAP"] == pytest.approx(1.0)


def test_one_training_step_then_evaluation(coco_root):
    cfg = demo_cfg(coco_root, **{"train_cfg.max_epochs": 1, "train_cfg.val_interval": 1})
    module, data = build_task(cfg)
    t = trainer(cfg, limit_train_batches=1, num_sanity_val_steps=0)
    t.fit(module, datamodule=data)
    assert t.global_step == 1
    for key in ("coco/bbox_mAP", "coco/segm_mAP", "train/loss"):
        assert key in t.callback_metrics and torch.isfinite(t.callback_metrics[key])


def test_mixed_precision_trains_the_backbone_in_half_and_the_heads_in_float32(coco_root):
    """mmcv's nms reads float32 boxes only: Mask R-CNN stopped in the RPN under autocast.
    (On CPU Lightning's 16-mixed is bf16 too; the fix does not depend on the dtype.)"""
    cfg = demo_cfg(coco_root, **{"train_cfg.max_epochs": 1, "train_cfg.val_interval": 1})
    module, data = build_task(cfg)
    dtypes: dict[str, set] = {"backbone": set(), "rpn": set()}
    # The backbone's first convolution (its outputs end in float32 LayerNorms under autocast).
    conv = next(m for m in module.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, out: dtypes["backbone"].add(out.dtype))
    module.model.rpn_head.register_forward_pre_hook(
        lambda m, args: dtypes["rpn"].update(a.dtype for a in args[0]))
    t = trainer(cfg, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
                precision="bf16-mixed")
    t.fit(module, datamodule=data)
    assert t.global_step == 1 and torch.isfinite(t.callback_metrics["train/loss"])
    assert "coco/bbox_mAP" in t.callback_metrics
    assert dtypes == {"backbone": {torch.bfloat16}, "rpn": {torch.float32}}
    assert "extract_feat" not in vars(module.model)  # the class's method again


def test_loss_falls_over_a_short_run(coco_root):
    # No flips, and the config's lr without its long warm-up: 24 steps must show learning.
    cfg = demo_cfg(coco_root, **{"train_dataloader.dataset.pipeline.3.prob": 0.0,
                                 "param_scheduler": []})
    torch.manual_seed(0)
    module, data = build_task(cfg)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    t = trainer(cfg, max_steps=24, limit_train_batches=2, limit_val_batches=0,
                callbacks=[Record()])
    t.fit(module, datamodule=data)
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.7 * first, (first, last)


def test_train_tool_checkpoint_then_inference_pictures(coco_root, tmp_path):
    opts = [f"{k}={v}" for k, v in {
        "train_dataloader.dataset.data_root": f"{coco_root}/",
        "val_dataloader.dataset.data_root": f"{coco_root}/",
        "test_dataloader.dataset.data_root": f"{coco_root}/",
        "val_evaluator.ann_file": f"{coco_root}/annotations/instances_val2017.json",
        "train_dataloader.num_workers": 0, "val_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False,
        "val_dataloader.persistent_workers": False,
        "train_cfg.max_epochs": 1, "train_cfg.val_interval": 1,
    }.items()]
    work = tmp_path / "work"
    trained = train_main(DetectionModule, [
        str(DEMO), "--work-dir", str(work), "--trainer.accelerator", "cpu",
        "--trainer.limit_val_batches", "1", "--cfg-options", *opts]).lightning_module
    ckpt = work / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (work / DEMO.name).is_file()
    assert list((work / "tensorboard").rglob("events*"))
    (csv,) = (work / "csv").rglob("metrics.csv")
    assert "coco/bbox_mAP" in csv.read_text().splitlines()[0]
    # The checkpoint alone rebuilds the module (config, class names, weights): same predictions.
    restored = DetectionModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    assert tuple(restored.dataset_meta["classes"]) == DEMO_DET_CLASSES
    batch = next(iter(trained.trainer.datamodule.val_dataloader()))
    trained.eval()
    with torch.no_grad():
        a, b = trained.predict_step(batch), restored.predict_step(batch)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.pred_instances.bboxes, y.pred_instances.bboxes)
        torch.testing.assert_close(x.pred_instances.scores, y.pred_instances.scores)
    from lightning_modules.inference import infer

    image = next((coco_root / "val2017").glob("*.jpg"))
    cfg = demo_cfg(coco_root)
    cfg_path = tmp_path / "cfg.py"
    cfg.dump(str(cfg_path))
    (out,) = infer(cfg_path, ckpt, [str(image)], tmp_path / "pics", score_thr=0.0)
    assert Image.open(out).size == Image.open(image).size
    # A checkpoint from another model is refused with a clear message.
    other = demo_cfg(coco_root, **{"model.roi_head.bbox_head.num_classes": 7})
    with pytest.raises(RuntimeError, match="does not fit this model.*bbox_head.fc_cls.weight"):
        DetectionModule.load_from_checkpoint(ckpt, map_location="cpu", config=other)
