"""Classification: the model layout, the recipe's pieces, the data module, the CLI end to end,
and the hand-over of its checkpoints to the MM detection configs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import backbones  # noqa: F401
from heads.classifier import ImageClassifier
from lightning_modules.classification import (
    ClassificationModule,
    ImageFolderDataModule,
    cli_main,
    warmup_cosine,
)
from lightning_modules.demo_data import DEMO_DET_CLASSES, make_imagenet_demo

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs/classification"
# The demo's reduced InLine-PVT, smaller still for speed.
SMALL = dict(embed_dims=[16, 32, 32, 64], num_heads=[1, 1, 1, 2], mlp_ratios=[2, 2, 2, 2],
             depths=[1, 1, 1, 1], img_size=32, drop_path_rate=0.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    make_imagenet_demo(root, num_train=24, num_val=12, side_range=(40, 48), seed=3)
    return root / "imagenet"


def test_warmup_cosine_schedule():
    kw = dict(total=100, warmup=10, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
    assert warmup_cosine(0, **kw) == pytest.approx(1e-6)
    assert warmup_cosine(5, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert warmup_cosine(10, **kw) == pytest.approx(1e-3)
    assert warmup_cosine(55, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert warmup_cosine(100, **kw) == pytest.approx(1e-5)
    lrs = [warmup_cosine(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_classifier_equals_the_timm_model_and_loads_its_weights():
    """Backbone + head from heads/ computes what the timm model with a head computes, and a
    timm-layout (official) checkpoint loads into it through the family filter."""
    torch.manual_seed(0)
    ref = timm.create_model("inline_pvt_tiny", num_classes=5, **SMALL).eval()
    clf = ImageClassifier("inline_pvt_tiny", 5, **SMALL).eval()
    notes = clf.load_timm_state_dict({"model": ref.state_dict()})
    assert notes == []
    x = torch.randn(2, 3, 40, 52)
    torch.testing.assert_close(clf(x), ref(x))
    assert set(clf.timm_state_dict()) == set(ref.state_dict())

    other = ImageClassifier("inline_pvt_tiny", 3, **SMALL)
    notes = other.load_timm_state_dict({"model": ref.state_dict()})
    assert notes and "5 classes" in notes[0]  # head skipped, backbone loaded
    torch.testing.assert_close(other.backbone(x), ref.forward_head(ref.forward_features(x),
                                                                   pre_logits=True))
    wrong = ImageClassifier("inline_pvt_tiny", 5, **{**SMALL, "embed_dims": [16, 32, 48, 64]})
    with pytest.raises(RuntimeError, match="does not match inline_pvt_tiny"):
        wrong.load_timm_state_dict({"model": ref.state_dict()})
    with pytest.raises(ValueError, match="unknown model 'inline_pvt_tinny'"):
        ImageClassifier("inline_pvt_tinny", 5)


def test_no_weight_decay_groups():
    kw = dict(dims=[32, 32, 32, 32], depths=[2, 1, 1, 1], num_heads=[1, 1, 1, 1])
    module = ClassificationModule("l2vit_tiny", num_classes=4, model_kwargs=kw)
    from timm.optim import param_groups_weight_decay
    groups = param_groups_weight_decay(module.model, 0.05,
                                       no_weight_decay_list=module.model.no_weight_decay())
    names = {id(p): n for n, p in module.model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "backbone.stages.0.1.attn.temperature" in no_decay
    assert "backbone.stages.0.0.norm1.weight" in no_decay and "head.bias" in no_decay
    assert "backbone.stages.0.1.attn.qkv.weight" in decay and "head.weight" in decay
    assert not any("norm" in n or n.endswith(".bias") for n in decay)


def test_mixup_needs_an_even_batch_and_the_loss_is_soft_target():
    module = ClassificationModule("inline_pvt_tiny", num_classes=4, model_kwargs=SMALL)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    module.log = lambda *a, **k: None
    loss = module.training_step((x, y), 0)
    assert loss.ndim == 0 and loss.item() > 0
    with pytest.raises(ValueError, match="even batch size"):
        module.training_step((x[:3], y[:3]), 0)


def test_overfits_a_batch():
    """Learning happens: the loss on a fixed batch falls far under chance level."""
    torch.manual_seed(0)
    module = ClassificationModule("inline_pvt_tiny", num_classes=4, model_kwargs=SMALL,
                                  mixup_alpha=0, cutmix_alpha=0, label_smoothing=0)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(module(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 1.0 and loss.item() < 0.1 * math.log(4)


def test_datamodule_layout_and_errors(folder: Path, tmp_path: Path):
    dm = ImageFolderDataModule(str(folder), model_name="inline_pvt_tiny", batch_size=4,
                               num_workers=0, img_size=32)
    assert dm.classes == sorted(DEMO_DET_CLASSES) and dm.num_classes == 4
    assert (dm.crop_pct, dm.interpolation) == (0.9, "bicubic")  # the model's own settings
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    assert len(dm.dataset("val")) == 12

    with pytest.raises(FileNotFoundError, match="ImageNet layout"):
        ImageFolderDataModule(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad"
    for split in ("train", "val"):
        (bad / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / split / "a" / "ok.png")
    (bad / "train" / "a" / "broken.JPEG").write_bytes(b"not a jpeg")
    dm = ImageFolderDataModule(str(bad), batch_size=1, num_workers=0, img_size=8)
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.JPEG.*corrupt"):
        list(dm.train_dataloader())


def _cli_args(folder: Path, work: Path, *extra: str) -> list[str]:
    return ["-c", str(CONFIGS / "demo_inline_pvt.yaml"),
            "--data.data_dir", str(folder), "--data.num_workers", "0", "--data.batch_size", "4",
            "--data.img_size", "32", "--model.model_kwargs", yaml.safe_dump(SMALL),
            "--trainer.default_root_dir", str(work), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.accelerator", "cpu", "--checkpoint.dirpath", str(work / "ckpt"), *extra]


def test_cli_fit_validate_predict_and_mm_pretrained(folder: Path, tmp_path: Path):
    work = tmp_path / "run"
    cli = cli_main(["fit", *_cli_args(folder, work, "--trainer.max_epochs", "1",
                                      "--trainer.limit_train_batches", "3")])
    assert cli.trainer.global_step == 3
    last = work / "ckpt" / "last.ckpt"
    assert last.is_file()
    fit_top1 = cli.trainer.callback_metrics["val/top1"].item()
    assert "val_ema/top1" in cli.trainer.callback_metrics  # the demo keeps an EMA

    cli = cli_main(["validate", *_cli_args(folder, work, "--ckpt_path", str(last))])
    assert cli.trainer.callback_metrics["val/top1"].item() == pytest.approx(fit_top1)

    out = tmp_path / "pred.csv"
    cli_main(["predict", *_cli_args(folder, work, "--ckpt_path", str(last),
                                    "--prediction_writer.output_file", str(out))])
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + 12 and rows[0].startswith("path,top1,prob1")
    assert rows[1].split(",")[1] in DEMO_DET_CLASSES

    # The checkpoint is an MM init_cfg Pretrained checkpoint as it is.
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import heads.mm_backbones  # noqa: F401
    init_default_scope("mmdet")
    backbone = MODELS.build(dict(type="InLinePVTBackbone", arch="tiny", out_indices=(0, 1, 2, 3),
                                 init_cfg=dict(type="Pretrained", checkpoint=str(last)),
                                 **{k: v for k, v in SMALL.items()}))
    backbone.init_weights()
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    own = backbone.state_dict()
    loaded = [k for k in state if k.startswith("model.backbone.")]
    assert loaded
    for k in loaded:
        torch.testing.assert_close(own["model." + k[len("model.backbone."):]], state[k])


def test_cli_validate_an_official_checkpoint(folder: Path, tmp_path: Path):
    """``validate --model.checkpoint`` on a timm-layout ("official") file reports the top-1 that
    the timm model itself gets on the val images with the same eval transform."""
    torch.manual_seed(1)
    ref = timm.create_model("inline_pvt_tiny", num_classes=4, **SMALL).eval()
    path = tmp_path / "official.pth"
    torch.save({"model": ref.state_dict(), "epoch": 299}, path)
    cli = cli_main(["validate", *_cli_args(folder, tmp_path / "v", "--model.checkpoint",
                                           str(path), "--model.ema_decay", "null")])
    dm = cli.datamodule
    correct = total = 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            correct += (ref(x).argmax(-1) == y).sum().item()
            total += len(y)
    assert cli.trainer.callback_metrics["val/top1"].item() == pytest.approx(correct / total)


def test_variant_configs_match_the_builders():
    """One YAML per variant; its drop path is the builder's default and its input size the
    model's, so the configs cannot drift from backbones/."""
    names = timm.list_models("inline_*") + timm.list_models("l2vit_*")
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "demo_inline_pvt") == \
        sorted(names)
    for name in names:
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert cfg["model"]["model_name"] == name
        with torch.device("meta"):
            model = timm.create_model(name)
        rate = max(getattr(m, "drop_prob", 0.0) for m in model.modules())
        assert cfg["model"]["model_kwargs"]["drop_path_rate"] == pytest.approx(rate, abs=1e-4)
        assert cfg["data"]["img_size"] == timm.models.get_pretrained_cfg(name).input_size[-1]
        assert cfg["model"]["weight_decay"] == 0.05 and cfg["trainer"]["max_epochs"] == 300
        assert set(cfg) == {"seed_everything", "trainer", "model", "data", "checkpoint"}


@pytest.mark.slow
@pytest.mark.parametrize("name", timm.list_models("inline_*") + timm.list_models("l2vit_*"))
def test_variant_config_instantiates(name: str, folder: Path, tmp_path: Path):
    cli = cli_main(["-c", str(CONFIGS / f"{name}.yaml"), "--data.data_dir", str(folder),
                    "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
                    "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"], run=False)
    assert cli.model.model.model_name == name and cli.model.model.head.out_features == 4
