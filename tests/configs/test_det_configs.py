"""MMDetection configs under configs/: every detection config loads, says what its name says,
downloads nothing, and its FPN takes exactly the channels and strides its backbone gives.

Fast (default suite): reading every config; building each distinct backbone and checking its real
output channels and strides against the neck and heads; one representative config per family
built in full (depths reduced through ``model.backbone`` overrides), run in ``mode='tensor'`` and
``mode='loss'`` with a backward pass, and its optimizer's weight-decay groups checked.
Slow (``make test-all``): every config built in full at its real depth, one ``mode='tensor'``
forward at 128 x 160.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
from config_common import (
    FAMILY_DIR,
    FAMILY_TYPE,
    OUR_BACKBONES,
    SIZE_ARCH,
    config_ids,
    config_strings,
    read_config,
    shipped_configs,
    sync_bn_to_bn,
    use_toolbox,
)
from mmengine.config import ConfigDict

# Every mmdet config outside _base_ (the COCO recipes and any other, e.g. the demo) ...
DET_CONFIGS = shipped_configs("mmdet")
IDS = config_ids(DET_CONFIGS)
# ... and the COCO recipes among them, named as mmdet names its configs:
# {detector}_{backbone}-{size}_{neck}_{schedule}_{dataset}.
NAME_RE = re.compile(
    r"^(?P<det>mask-rcnn|retinanet)_(?P<family>inline-swin|inline-pvt|inline-cswin|inline-deit"
    r"|l2vit)-(?P<size>[tsmlb])_fpn_(?P<sched>1x|ms-3x)_coco$")
RECIPES = [p for p in DET_CONFIGS if NAME_RE.match(p.stem)]
RECIPE_IDS = [p.stem for p in RECIPES]

# The configs this project ships (a file lost or renamed fails here, not silently).
EXPECTED = (
    [f"mask-rcnn_inline-swin-{s}_fpn_{k}_coco" for s in "ts" for k in ("1x", "ms-3x")]
    + [f"mask-rcnn_inline-pvt-{s}_fpn_{k}_coco" for s in "tsml" for k in ("1x", "ms-3x")]
    + [f"mask-rcnn_inline-cswin-{s}_fpn_{k}_coco" for s in "ts" for k in ("1x", "ms-3x")]
    + [f"mask-rcnn_l2vit-{s}_fpn_{k}_coco" for s in "tsb" for k in ("1x", "ms-3x")]
    + ["retinanet_inline-pvt-t_fpn_1x_coco", "retinanet_inline-pvt-s_fpn_1x_coco",
       "retinanet_l2vit-t_fpn_1x_coco"])

# One config per family for the fast end-to-end test, with the depth cut down.
REPRESENTATIVES = {
    "mask-rcnn_inline-swin-t_fpn_1x_coco": dict(depths=(1, 1, 1, 2)),  # last stage: W + SW
    "retinanet_inline-pvt-t_fpn_1x_coco": dict(depths=(1, 1, 1, 1)),
    "mask-rcnn_inline-cswin-t_fpn_1x_coco": dict(depths=(1, 1, 1, 1)),
    "mask-rcnn_l2vit-t_fpn_ms-3x_coco": dict(depths=(1, 1, 2, 1)),  # stage 3: LWA + LGA
}


def _model_cfg(path: Path, **backbone_overrides) -> ConfigDict:
    """``cfg.model`` ready to build here: no checkpoint, BN instead of SyncBN."""
    model = copy.deepcopy(read_config(path).model)
    model.backbone.init_cfg = None
    model.backbone.update(backbone_overrides)
    return sync_bn_to_bn(model)


def _build_detector(path: Path, **backbone_overrides):
    use_toolbox("mmdet")
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(_model_cfg(path, **backbone_overrides))
    model.init_weights()
    return model


def _demo_batch(model, with_mask: bool, training: bool, hw=(128, 160)):
    from mmdet.testing import demo_mm_inputs

    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, *hw)], num_items=[3],
                            num_classes=80, with_mask=with_mask)
    return model.data_preprocessor(packed, training)


def _run_tensor(model, with_mask: bool, hw=(128, 160)):
    model.eval()
    with torch.no_grad():
        data = _demo_batch(model, with_mask, training=False, hw=hw)
        out = model(**data, mode="tensor")
    leaves = list(_tensors(out))
    assert leaves, "mode='tensor' returned no tensors"
    assert all(torch.isfinite(t).all() for t in leaves)
    return out


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _tensors(v)


# ---- the set of configs ------------------------------------------------------------------------

def test_expected_recipes_present():
    assert sorted(RECIPE_IDS) == sorted(EXPECTED)


# ---- reading each config (no mmdet needed) -----------------------------------------------------

@pytest.mark.parametrize("path", DET_CONFIGS, ids=IDS)
def test_config_loads_with_our_backbone(path: Path):
    cfg = read_config(path)
    assert "heads.mm_backbones" in cfg.custom_imports["imports"]
    assert cfg.model.backbone.type in OUR_BACKBONES
    urls = [s for s in config_strings(cfg.to_dict()) if "://" in s]
    assert not urls, f"configs must not download anything: {urls}"


@pytest.mark.parametrize("path", RECIPES, ids=RECIPE_IDS)
def test_recipe_says_what_its_name_says(path: Path):
    m = NAME_RE.match(path.stem)
    assert path.parent.name == FAMILY_DIR[m["family"]]
    cfg = read_config(path)
    model, bb = cfg.model, cfg.model.backbone

    assert cfg.default_scope == "mmdet"
    assert "heads.mm_backbones" in cfg.custom_imports["imports"]
    assert model.type == {"mask-rcnn": "MaskRCNN", "retinanet": "RetinaNet"}[m["det"]]
    assert bb.type in OUR_BACKBONES
    assert bb.type == FAMILY_TYPE[m["family"]]
    assert bb.arch == SIZE_ARCH[m["size"]]
    assert bb.frozen_stages == -1 and bb.with_cp is False
    assert 0.0 <= bb.drop_path_rate < 1.0
    assert len(model.neck.in_channels) == len(bb.out_indices)
    assert model.neck.out_channels == 256 and model.neck.num_outs == 5

    # ImageNet weights from a local file named after the variant; nothing is downloaded.
    assert bb.init_cfg.type == "Pretrained"
    stem = f"{FAMILY_DIR[m['family']]}_{m['size']}.pth"
    assert bb.init_cfg.checkpoint == f"pretrained/{stem}"

    # Schedule: 1x = 12 epochs, steps 8 / 11; 3x = 36 epochs, steps 27 / 33.
    epochs, steps = {"1x": (12, [8, 11]), "ms-3x": (36, [27, 33])}[m["sched"]]
    assert cfg.train_cfg.type == "EpochBasedTrainLoop"
    assert cfg.train_cfg.max_epochs == epochs and cfg.train_cfg.val_interval == 1
    warmup, steps_cfg = cfg.param_scheduler
    assert warmup.type == "LinearLR" and warmup.end == 500 and not warmup.by_epoch
    assert steps_cfg.type == "MultiStepLR" and steps_cfg.milestones == steps
    assert steps_cfg.end == epochs and steps_cfg.by_epoch

    # Optimizer: AdamW lr 1e-4, wd 0.05, no decay on norms / biases / embeddings / temperatures.
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ("AdamW", 1e-4, 0.05)
    pw = cfg.optim_wrapper.paramwise_cfg
    assert pw.norm_decay_mult == 0 and pw.bias_decay_mult == 0
    for key in ("pos_embed", "cls_token", "relative_position_bias_table", "temperature"):
        assert pw.custom_keys[key].decay_mult == 0
    assert cfg.auto_scale_lr.base_batch_size == 16

    # Data: COCO 2017; plain samplers (the Lightning bridge makes them DDP-safe), training
    # batches grouped by orientation as in mmdet.
    train, val = cfg.train_dataloader, cfg.val_dataloader
    assert train.dataset.type == "CocoDataset"
    assert train.dataset.ann_file == "annotations/instances_train2017.json"
    assert val.dataset.ann_file == "annotations/instances_val2017.json"
    assert train.batch_sampler.type == "AspectRatioBatchSampler"
    assert train.sampler.type == "DefaultSampler" and "batch_sampler" not in val
    assert cfg.test_dataloader == val and cfg.test_evaluator == cfg.val_evaluator
    metric = cfg.val_evaluator.metric
    with_mask = m["det"] == "mask-rcnn"
    assert metric == (["bbox", "segm"] if with_mask else "bbox")
    pipeline = train.dataset.pipeline
    loads = [t for t in pipeline if t.type == "LoadAnnotations"]
    assert loads and loads[0].get("with_mask", False) == with_mask
    types = [t.type for t in pipeline]
    if m["sched"] == "ms-3x":
        assert "RandomChoice" in types and "Resize" not in types
        scales = pipeline[types.index("RandomChoice")].transforms[0][0].scales
        assert sorted(min(s) for s in scales) == list(range(480, 801, 32))
    else:
        resize = pipeline[types.index("Resize")]
        assert resize.scale == (1333, 800) and resize.keep_ratio


# ---- backbones as configured: real channels and strides against neck and heads ----------------

_SHAPES: dict[str, list[tuple[int, ...]]] = {}


def _backbone_outputs(backbone_cfg: dict, hw: tuple[int, int]) -> list[tuple[int, ...]]:
    """Output shapes of the backbone as configured (built once per distinct backbone config;
    drop path and weights do not change shapes)."""
    cfg = {k: v for k, v in backbone_cfg.items() if k not in ("init_cfg", "drop_path_rate")}
    key = repr(sorted(cfg.items())) + repr(hw)
    if key not in _SHAPES:
        use_toolbox("mmdet")
        from mmdet.registry import MODELS

        backbone = MODELS.build(sync_bn_to_bn(dict(cfg, init_cfg=None))).eval()
        with torch.no_grad():
            feats = backbone(torch.zeros(1, 3, *hw))
        _SHAPES[key] = [tuple(f.shape) for f in feats]
    return _SHAPES[key]


@pytest.mark.parametrize("path", DET_CONFIGS, ids=IDS)
def test_neck_takes_the_backbones_real_outputs(path: Path):
    cfg = read_config(path)
    bb, neck = cfg.model.backbone, cfg.model.neck
    hw = (64, 96)
    shapes = _backbone_outputs(bb.to_dict(), hw)
    assert [s[1] for s in shapes] == list(neck.in_channels)
    strides = [hw[0] // s[2] for s in shapes]
    assert [s[2:] for s in shapes] == [(math.ceil(hw[0] / r), math.ceil(hw[1] / r))
                                       for r in strides]
    # The FPN levels the heads read must sit at the strides the heads assume.
    start = neck.get("start_level", 0)
    if cfg.model.type == "MaskRCNN":
        assert strides[start:] == cfg.model.roi_head.bbox_roi_extractor.featmap_strides
        assert strides[start:] == cfg.model.rpn_head.anchor_generator.strides[:len(strides)]
    else:
        assert strides[start:] == cfg.model.bbox_head.anchor_generator.strides[:len(strides)]


@pytest.mark.parametrize("name", ["mask-rcnn_inline-swin-t_fpn_1x_coco",
                                  "mask-rcnn_inline-swin-t_fpn_ms-3x_coco",
                                  "retinanet_inline-pvt-t_fpn_1x_coco"])
def test_train_pipeline_runs(name: str):
    """The training transforms after loading (resizes, crop, flip, packing) on a synthetic
    image with boxes and masks: catches a wrong transform name or argument before a real run."""
    use_toolbox("mmdet")
    import numpy as np
    from mmcv.transforms import Compose
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks

    cfg = read_config(next(p for p in RECIPES if p.stem == name))
    steps = cfg.train_dataloader.dataset.pipeline
    assert [t.type for t in steps[:2]] == ["LoadImageFromFile", "LoadAnnotations"]
    with_mask = steps[1].get("with_mask", False)
    pipeline = Compose(copy.deepcopy(steps[2:]))
    rng = np.random.default_rng(0)
    h, w = 480, 640
    boxes = np.array([[10, 20, 200, 240], [300, 100, 620, 460]], dtype=np.float32)
    masks = np.zeros((2, h, w), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        masks[i, y0:y1, x0:x1] = 1
    for _ in range(8):  # every branch of RandomChoice / RandomChoiceResize
        results = dict(img=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), img_shape=(h, w),
                       ori_shape=(h, w), img_path="synthetic.jpg", img_id=0,
                       gt_bboxes=HorizontalBoxes(boxes.copy()),
                       gt_bboxes_labels=np.array([1, 2]),
                       gt_ignore_flags=np.zeros(2, dtype=bool))
        if with_mask:
            results["gt_masks"] = BitmapMasks(masks.copy(), h, w)
        out = pipeline(results)
        img, sample = out["inputs"], out["data_samples"]
        assert img.shape[0] == 3 and max(img.shape[1:]) <= 1333 and min(img.shape[1:]) <= 800
        assert sample.img_shape == tuple(img.shape[1:])
        if with_mask:
            assert sample.gt_instances.masks.height == img.shape[1]


# ---- full detectors ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REPRESENTATIVES))
def test_representative_detector_builds_runs_and_trains(name: str):
    """Per family, one config built in full (shallower), run in tensor and loss mode; every
    parameter gets a gradient (DDP without find_unused_parameters needs that), and the weight
    decay groups leave out norms, biases, position embeddings and temperatures."""
    path = next(p for p in DET_CONFIGS if p.stem == name)
    model = _build_detector(path, **REPRESENTATIVES[name])
    with_mask = model.with_mask if hasattr(model, "with_mask") else False
    _run_tensor(model, with_mask)

    model.train()
    losses = model(**_demo_batch(model, with_mask, training=True), mode="loss")
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters with no gradient: {no_grad[:10]}"

    from mmengine.optim import build_optim_wrapper

    cfg = read_config(path)
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper)).optimizer
    ids = {id(p): n for n, p in model.named_parameters()}
    decay = {ids[id(p)]: g["weight_decay"] for g in optim.param_groups for p in g["params"]}
    assert len(decay) == len(ids)
    for n, wd in decay.items():
        leaf = n.rsplit(".", 1)[-1]
        exempt = (leaf == "bias" or any(k in n for k in (
            "pos_embed", "cls_token", "relative_position_bias_table", "temperature"))
            or re.search(r"(^|\.)(norm\d*|bn|ln)(\.|$)", n) is not None)
        if exempt:
            assert wd == 0, f"{n} should have no weight decay"
    assert any(wd == 0.05 for wd in decay.values())
    backbone_decayed = [n for n, wd in decay.items() if n.startswith("backbone.") and wd > 0]
    assert backbone_decayed and all(n.endswith("weight") for n in backbone_decayed)


@pytest.mark.slow
@pytest.mark.parametrize("path", DET_CONFIGS, ids=IDS)
def test_full_detector_forward(path: Path):
    """Every config at its real depth, built from the Config and run once in tensor mode."""
    model = _build_detector(path)
    _run_tensor(model, with_mask=getattr(model, "with_mask", False))
