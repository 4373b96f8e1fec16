"""MMSegmentation configs under configs/: every segmentation config loads, says what its name says
(the UperNet and Semantic FPN ADE20K recipes), downloads nothing, and its heads take exactly the
channels its backbone gives.

Fast (default suite): reading every config; building each distinct backbone and checking its real
output channels and strides against the neck and heads; one representative config per family
built in full (depths reduced), run in ``mode='tensor'``, ``mode='loss'`` with a backward pass and
``mode='predict'``, and its optimizer's weight-decay groups checked; the ADE20K pipelines.
Slow (``make test-all``): every config built in full at its real depth, one ``mode='predict'``
pass at 128 x 160.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from config_common import (
    CONFIG_ROOT,
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

# Every mmseg config outside _base_ (the ADE20K recipes and the demo) ...
SEG_CONFIGS = shipped_configs("mmseg")
IDS = config_ids(SEG_CONFIGS)
# ... and the ADE20K recipes among them, named as mmseg names its configs:
# {segmentor}_{backbone}-{size}_{gpus}xb{batch per gpu}-{iterations}_{dataset}-{crop}.
NAME_RE = re.compile(
    r"^(?P<seg>upernet|fpn)_(?P<family>inline-swin|inline-pvt|inline-cswin|l2vit)-(?P<size>[tsmlb])"
    r"_(?P<gpus>\d+)xb(?P<batch>\d+)-(?P<iters>\d+)k_ade20k-512x512$")
RECIPES = [p for p in SEG_CONFIGS if NAME_RE.match(p.stem)]
RECIPE_IDS = [p.stem for p in RECIPES]

# Segmentation drop-path rates of the sister repos (InLine ships no segmentation code):
# Swin UperNet 0.3 (T/S/B), CSwin UperNet T 0.3 / S 0.4, L2ViT UperNet 0.3, PVT Semantic FPN 0.1.
DROP_PATH = {("inline-swin", s): 0.3 for s in "tsb"} | {
    ("inline-cswin", "t"): 0.3, ("inline-cswin", "s"): 0.4} | {
    ("l2vit", s): 0.3 for s in "tsb"} | {("inline-pvt", s): 0.1 for s in "tsml"}

SUFFIX_UPERNET = "8xb2-160k_ade20k-512x512"
SUFFIX_FPN = "4xb4-40k_ade20k-512x512"
# The configs this project ships (a file lost or renamed fails here, not silently).
EXPECTED = (
    [f"upernet_inline-swin-{s}_{SUFFIX_UPERNET}" for s in "tsb"]
    + [f"upernet_inline-cswin-{s}_{SUFFIX_UPERNET}" for s in "ts"]
    + [f"upernet_l2vit-{s}_{SUFFIX_UPERNET}" for s in "tsb"]
    + [f"fpn_inline-pvt-{s}_{SUFFIX_FPN}" for s in "tsml"])

# One config per family for the fast end-to-end test, with the depth cut down.
REPRESENTATIVES = {
    f"upernet_inline-swin-t_{SUFFIX_UPERNET}": dict(depths=(1, 1, 1, 2)),  # last stage: W + SW
    f"upernet_inline-cswin-t_{SUFFIX_UPERNET}": dict(depths=(1, 1, 1, 1)),
    f"upernet_l2vit-t_{SUFFIX_UPERNET}": dict(depths=(1, 1, 2, 1)),  # stage 3: LWA + LGA
    f"fpn_inline-pvt-t_{SUFFIX_FPN}": dict(depths=(1, 1, 1, 1)),
}


def _build_segmentor(path: Path, pad_to: tuple[int, int], **backbone_overrides):
    """``cfg.model`` built here: no checkpoint, BN instead of SyncBN, and training batches
    padded to ``pad_to`` instead of the 512 x 512 crop (8-30x less work on small inputs)."""
    use_toolbox("mmseg")
    from mmseg.registry import MODELS

    model_cfg = copy.deepcopy(read_config(path).model)
    model_cfg.data_preprocessor.size = pad_to
    model_cfg.backbone.init_cfg = None
    model_cfg.backbone.update(backbone_overrides)
    torch.manual_seed(0)
    model = MODELS.build(sync_bn_to_bn(model_cfg))
    model.init_weights()
    return model


def _batch(model, training: bool, hw=(128, 160), num_classes: int = 150, n: int = 1):
    """A packed batch of ``n`` random images with random label maps (a strip of 255, ignored),
    through the model's data_preprocessor."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(0)
    images, samples = [], []
    for _ in range(n):
        images.append(torch.randint(0, 256, (3, *hw), generator=g, dtype=torch.uint8))
        label = torch.randint(0, num_classes, (1, *hw), generator=g)
        label[:, :8] = 255
        sample = SegDataSample(metainfo=dict(img_shape=hw, ori_shape=hw, pad_shape=hw))
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return model.data_preprocessor({"inputs": images, "data_samples": samples}, training)


# ---- the set of configs --------------------------------------------------------------------------

def test_expected_recipes_present():
    assert sorted(RECIPE_IDS) == sorted(EXPECTED)


# ---- reading each config (no mmseg needed) -------------------------------------------------------

@pytest.mark.parametrize("path", SEG_CONFIGS, ids=IDS)
def test_config_loads_with_our_backbone(path: Path):
    cfg = read_config(path)
    assert cfg.default_scope == "mmseg"
    assert "heads.mm_backbones" in cfg.custom_imports["imports"]
    assert cfg.model.type == "EncoderDecoder"
    assert cfg.model.backbone.type in OUR_BACKBONES
    urls = [s for s in config_strings(cfg.to_dict()) if "://" in s]
    assert not urls, f"configs must not download anything: {urls}"
    assert cfg.train_cfg.type == "IterBasedTrainLoop"
    assert cfg.val_evaluator.type == "IoUMetric" and cfg.val_evaluator.iou_metrics == ["mIoU"]
    assert cfg.test_dataloader == cfg.val_dataloader and cfg.test_evaluator == cfg.val_evaluator
    # mmseg stacks a test batch without padding: one image per batch (sizes differ).
    assert cfg.val_dataloader.batch_size == 1
    # Training crops are padded to the data preprocessor's size: it must be the crop size.
    crops = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == "RandomCrop"]
    assert crops and tuple(cfg.model.data_preprocessor.size) == tuple(crops[0].crop_size)
    heads = [cfg.model.decode_head] + ([cfg.model.auxiliary_head]
                                       if "auxiliary_head" in cfg.model else [])
    assert all(h.num_classes == heads[0].num_classes for h in heads)


@pytest.mark.parametrize("path", RECIPES, ids=RECIPE_IDS)
def test_recipe_says_what_its_name_says(path: Path):
    m = NAME_RE.match(path.stem)
    assert path.parent.name == FAMILY_DIR[m["family"]]
    cfg = read_config(path)
    model, bb = cfg.model, cfg.model.backbone

    assert bb.type == FAMILY_TYPE[m["family"]] and bb.arch == SIZE_ARCH[m["size"]]
    assert bb.out_indices == (0, 1, 2, 3)
    assert bb.frozen_stages == -1 and bb.with_cp is False
    assert bb.drop_path_rate == DROP_PATH[m["family"], m["size"]]
    # ImageNet weights from a local file named after the variant; nothing is downloaded.
    assert bb.init_cfg.type == "Pretrained"
    assert bb.init_cfg.checkpoint == f"pretrained/{FAMILY_DIR[m['family']]}_{m['size']}.pth"

    head = model.decode_head
    assert head.num_classes == 150 and head.norm_cfg.type == "SyncBN"
    assert head.loss_decode.type == "CrossEntropyLoss" and head.loss_decode.loss_weight == 1.0
    assert model.test_cfg.mode == "whole"
    opt = cfg.optim_wrapper.optimizer
    total_batch = int(m["gpus"]) * int(m["batch"])
    assert cfg.train_dataloader.batch_size == int(m["batch"])
    assert total_batch == cfg.auto_scale_lr.base_batch_size == 16
    iters = int(m["iters"]) * 1000
    assert cfg.train_cfg.max_iters == iters

    if m["seg"] == "upernet":
        # UperNet: 512 channels, pooling scales 1, 2, 3, 6; FCN auxiliary head on level 2.
        assert head.type == "UPerHead" and head.channels == 512
        assert tuple(head.pool_scales) == (1, 2, 3, 6) and head.in_index == [0, 1, 2, 3]
        aux = model.auxiliary_head
        assert aux.type == "FCNHead" and aux.in_index == 2 and aux.channels == 256
        assert aux.num_classes == 150 and aux.loss_decode.loss_weight == 0.4
        assert "neck" not in model
        # 160k: AdamW lr 6e-5, wd 0.01; linear warm-up 1500 iterations, then poly (power 1).
        assert (opt.type, opt.lr, opt.weight_decay) == ("AdamW", 6e-5, 0.01)
        warmup, poly = cfg.param_scheduler
        assert warmup.type == "LinearLR" and not warmup.by_epoch
        assert (warmup.begin, warmup.end, warmup.start_factor) == (0, 1500, 1e-6)
        assert poly.type == "PolyLR" and not poly.by_epoch
        assert (poly.begin, poly.end, poly.power, poly.eta_min) == (1500, iters, 1.0, 0.0)
    else:
        # Semantic FPN (PVT paper): FPN 256 channels, 4 levels; FPNHead 128 channels; no aux.
        assert model.neck.type == "FPN" and model.neck.out_channels == 256
        assert model.neck.num_outs == 4
        assert head.type == "FPNHead" and head.channels == 128
        assert head.in_channels == [256] * 4 and head.feature_strides == [4, 8, 16, 32]
        assert "auxiliary_head" not in model
        # 40k: AdamW lr 1e-4, wd 1e-4, poly (power 0.9), no warm-up.
        assert (opt.type, opt.lr, opt.weight_decay) == ("AdamW", 1e-4, 1e-4)
        (poly,) = cfg.param_scheduler
        assert poly.type == "PolyLR" and not poly.by_epoch
        assert (poly.begin, poly.end, poly.power, poly.eta_min) == (0, iters, 0.9, 0.0)

    # No weight decay on norms, biases, position embeddings, tables, temperatures.
    pw = cfg.optim_wrapper.paramwise_cfg
    assert pw.norm_decay_mult == 0 and pw.bias_decay_mult == 0
    for key in ("pos_embed", "cls_token", "relative_position_bias_table", "temperature"):
        assert pw.custom_keys[key].decay_mult == 0

    # Data: ADE20K in the standard layout, 512 x 512 crops, "other" ignored.
    train, val = cfg.train_dataloader, cfg.val_dataloader
    for loader, folder in ((train, "training"), (val, "validation")):
        ds = loader.dataset
        assert ds.type == "ADE20KDataset" and ds.data_root == "data/ade/ADEChallengeData2016"
        assert ds.data_prefix == dict(img_path=f"images/{folder}",
                                      seg_map_path=f"annotations/{folder}")
        loads = [t for t in ds.pipeline if t.type == "LoadAnnotations"]
        assert len(loads) == 1 and loads[0].reduce_zero_label is True
    assert train.sampler.shuffle and not val.sampler.shuffle
    steps = {t.type: t for t in train.dataset.pipeline}
    assert tuple(steps["RandomCrop"].crop_size) == (512, 512)
    assert steps["RandomCrop"].cat_max_ratio == 0.75
    assert tuple(steps["RandomResize"].scale) == (2048, 512)
    assert tuple(steps["RandomResize"].ratio_range) == (0.5, 2.0)
    assert "PhotoMetricDistortion" in steps and steps["RandomFlip"].prob == 0.5
    resize = [t for t in val.dataset.pipeline if t.type == "Resize"]
    assert len(resize) == 1 and tuple(resize[0].scale) == (2048, 512) and resize[0].keep_ratio


# ---- backbones as configured: real channels and strides against neck and heads -----------------

_SHAPES: dict[str, list[tuple[int, ...]]] = {}


def _backbone_outputs(backbone_cfg: dict, hw: tuple[int, int]) -> list[tuple[int, ...]]:
    """Output shapes of the backbone as configured (built once per distinct backbone config;
    drop path and weights do not change shapes)."""
    cfg = {k: v for k, v in backbone_cfg.items() if k not in ("init_cfg", "drop_path_rate")}
    key = repr(sorted(cfg.items())) + repr(hw)
    if key not in _SHAPES:
        use_toolbox("mmseg")
        from mmseg.registry import MODELS

        backbone = MODELS.build(dict(cfg, init_cfg=None)).eval()
        with torch.no_grad():
            feats = backbone(torch.zeros(1, 3, *hw))
        _SHAPES[key] = [tuple(f.shape) for f in feats]
    return _SHAPES[key]


@pytest.mark.parametrize("path", SEG_CONFIGS, ids=IDS)
def test_heads_take_the_backbones_real_outputs(path: Path):
    cfg = read_config(path)
    model = cfg.model
    hw = (64, 96)
    shapes = _backbone_outputs(model.backbone.to_dict(), hw)
    channels = [s[1] for s in shapes]
    strides = [hw[0] // s[2] for s in shapes]
    assert strides == [4, 8, 16, 32]
    assert [s[2:] for s in shapes] == [(-(-hw[0] // r), -(-hw[1] // r)) for r in strides]
    if "neck" in model:
        assert model.neck.in_channels == channels
        head_in = [model.neck.out_channels] * model.neck.num_outs
    else:
        head_in = channels
    head = model.decode_head
    assert head.in_channels == [head_in[i] for i in head.in_index]
    if head.type == "FPNHead":
        assert head.feature_strides == [strides[i] for i in head.in_index]
    if "auxiliary_head" in model:
        aux = model.auxiliary_head
        assert aux.in_channels == head_in[aux.in_index]


# ---- pipelines -----------------------------------------------------------------------------------

def test_ade20k_pipelines_run():
    """The training transforms after loading (rescale, crop, flip, photometric distortion,
    packing) and the test resize, on a synthetic image and label map: catches a wrong transform
    name or argument before a real run."""
    use_toolbox("mmseg")
    from mmcv.transforms import Compose

    cfg = read_config(CONFIG_ROOT / "_base_/datasets/ade20k.py")
    train = cfg.train_pipeline
    assert [t.type for t in train[:2]] == ["LoadImageFromFile", "LoadAnnotations"]
    pipeline = Compose(copy.deepcopy(train[2:]))
    rng = np.random.default_rng(0)
    h, w = 375, 500  # a typical ADE20K size, smaller than the crop once rescaled at 0.5
    label = rng.integers(0, 150, (h, w)).astype(np.uint8)
    label[:40] = 255
    for _ in range(6):
        results = dict(img=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), img_shape=(h, w),
                       ori_shape=(h, w), img_path="synthetic.jpg", gt_seg_map=label.copy(),
                       seg_fields=["gt_seg_map"], reduce_zero_label=True)
        out = pipeline(results)
        img, sample = out["inputs"], out["data_samples"]
        assert img.shape[0] == 3 and max(img.shape[1:]) <= 512
        assert tuple(sample.gt_sem_seg.data.shape[1:]) == tuple(img.shape[1:])
        assert set(sample.gt_sem_seg.data.unique().tolist()) <= set(range(150)) | {255}

    test = Compose(copy.deepcopy([t for t in cfg.test_pipeline
                                  if t.type not in ("LoadImageFromFile", "LoadAnnotations")]))
    out = test(dict(img=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), img_shape=(h, w),
                    ori_shape=(h, w), img_path="synthetic.jpg"))
    assert tuple(out["inputs"].shape[1:]) == (512, 683)  # shorter side 512, aspect kept


# ---- full segmentors -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REPRESENTATIVES))
def test_representative_segmentor_builds_runs_and_trains(name: str):
    """Per family, one config built in full (shallower), run in tensor, loss and predict mode;
    every parameter gets a gradient (DDP without find_unused_parameters needs that), and the
    weight decay groups leave out norms, biases, position embeddings and temperatures."""
    path = next(p for p in SEG_CONFIGS if p.stem == name)
    hw = (64, 96)
    model = _build_segmentor(path, hw, **REPRESENTATIVES[name])

    model.eval()
    with torch.no_grad():
        logits = model(**_batch(model, training=False, hw=hw), mode="tensor")
        assert tuple(logits.shape) == (1, 150, hw[0] // 4, hw[1] // 4)
        (pred,) = model(**_batch(model, training=False, hw=hw), mode="predict")
    assert tuple(pred.pred_sem_seg.data.shape) == (1, *hw)
    assert torch.isfinite(logits).all()

    model.train()  # two images: BatchNorm after UperNet's 1 x 1 pooling needs more than one
    losses = model(**_batch(model, training=True, hw=hw, n=2), mode="loss")
    assert ("aux.loss_ce" in losses) == ("auxiliary_head" in read_config(path).model)
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
    wd = cfg.optim_wrapper.optimizer.weight_decay
    # Norm layers by type, whatever their names (e.g. CSwin's stem LayerNorm is `...conv_embed.2`).
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)
    norm_params = {f"{m}.{n}" for m, mod in model.named_modules() if isinstance(mod, norm_types)
                   for n, _ in mod.named_parameters(recurse=False)}
    assert norm_params
    for n, d in decay.items():
        exempt = (n.rsplit(".", 1)[-1] == "bias" or n in norm_params or any(k in n for k in (
            "pos_embed", "cls_token", "relative_position_bias_table", "temperature")))
        if exempt:
            assert d == 0, f"{n} should have no weight decay"
        else:
            assert d == pytest.approx(wd), f"{n} should have weight decay {wd}"
    backbone_decayed = [n for n, d in decay.items() if n.startswith("backbone.") and d > 0]
    assert backbone_decayed and all(n.endswith("weight") for n in backbone_decayed)


@pytest.mark.slow
@pytest.mark.parametrize("path", SEG_CONFIGS, ids=IDS)
def test_full_segmentor_predicts(path: Path):
    """Every config at its real depth, built from the Config, one prediction at 128 x 160."""
    model = _build_segmentor(path, (128, 160)).eval()
    num_classes = model.decode_head.num_classes
    with torch.no_grad():
        (pred,) = model(**_batch(model, False, num_classes=num_classes), mode="predict")
    assert tuple(pred.seg_logits.data.shape) == (num_classes, 128, 160)
    assert torch.isfinite(pred.seg_logits.data).all()

