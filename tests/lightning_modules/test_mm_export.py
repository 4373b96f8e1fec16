"""Export of whole MM models (lightning_modules/export.py, tools/export.py): the wrappers compute
what the MM models compute, the whole segmentor (from a checkpoint, through the tool) and the
detector's backbone + neck export once with dynamic height and width and match eager PyTorch at
other sizes (non-square, and sizes needing the backbone's padding), and what cannot be exported
with dynamic sizes is named."""

import importlib.util
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_modules import export
from lightning_modules.demo_data import make_ade_demo, make_coco_demo
from lightning_modules.mm_bridge import MMDataModule, build_task, load_config

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("export_tool", ROOT / "tools/export.py")
export_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_tool)
SEG_DEMO = ROOT / "configs/demo/fpn_inline-pvt-demo_demo-ade.py"
DET_DEMO = ROOT / "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"


def _options(root: str) -> dict:
    return {f"{s}_dataloader.{k}": v for s in ("train", "val", "test")
            for k, v in (("dataset.data_root", root), ("num_workers", 0),
                         ("persistent_workers", False))}


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    """A demo segmentation checkpoint after two steps, and its config file."""
    tmp = tmp_path_factory.mktemp("export")
    make_ade_demo(tmp, num_train=4, num_val=2, seed=3)
    cfg = load_config(SEG_DEMO, {**_options(str(tmp / "ade/ADEChallengeData2016")),
                                 "train_dataloader.batch_size": 2})
    config = tmp / "seg.py"
    cfg.dump(str(config))
    module, data = build_task(cfg)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp / "seg.ckpt")
    return tmp / "seg.ckpt", config


def test_the_segmentor_wrapper_gives_the_models_own_logits(seg_ckpt):
    ckpt, config = seg_ckpt
    target = export.load_target(str(config), str(ckpt))
    module = target.model.segmentor
    assert target.kind == "segmentor" and target.info["classes"] == ["sky", "grass", "building",
                                                                     "ball"]
    from lightning_modules.segmentation import SegmentationModule

    reference = SegmentationModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    batch = next(iter(MMDataModule(reference.cfg).val_dataloader()))
    image = batch["inputs"][0]  # uint8 BGR as loaded; the wrapper takes RGB
    with torch.no_grad():
        (sample,) = reference.predict_step({"inputs": [image], "data_samples":
                                            batch["data_samples"][:1]})
        logits = target.model(image.flip(0).float()[None])[0]
    assert module is not reference.model
    torch.testing.assert_close(logits, sample.seg_logits.data, atol=1e-4, rtol=1e-4)


def _det_config(tmp_path: Path) -> Path:
    """The demo detection config, with generated data, as a file."""
    make_coco_demo(tmp_path, num_train=2, num_val=1, seed=4)
    data = f"{tmp_path}/coco/"
    cfg = load_config(DET_DEMO, {**_options(data), "val_evaluator.ann_file":
                                 data + "annotations/instances_val2017.json"})
    config = tmp_path / "det.py"
    cfg.dump(str(config))
    return config


def test_the_detector_wrapper_gives_the_backbone_and_neck_maps(tmp_path):
    target = export.load_target(str(_det_config(tmp_path)))
    assert target.kind == "detector-features"
    x = torch.rand(1, 3, 96, 160) * 255  # multiples of 32: no preprocessor padding
    detector = target.model.detector
    with torch.no_grad():
        want = detector.extract_feat(detector.data_preprocessor(
            {"inputs": [x[0].flip(0)], "data_samples": None}, False)["inputs"])
        got = target.model(x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_a_model_that_branches_on_the_size_is_refused_with_the_place(tmp_path):
    class Branchy(nn.Module):
        def forward(self, x):
            if x.shape[-1] > 100:  # specialises the graph on the example's width
                return x * 2
            return x

    target = export.ExportTarget(Branchy(), "classifier", "x", (64, 128))
    with pytest.raises(RuntimeError, match=r"cannot export the classifier as onnx with dynamic "
                                           r"height and width .*\(at forward: if x.shape"):
        export.export_model(target, tmp_path / "b.onnx", "onnx")


def test_the_tool_exports_the_demo_segmentor_from_a_checkpoint_at_any_size(seg_ckpt, tmp_path,
                                                                          capsys):
    ckpt, config = seg_ckpt
    out = tmp_path / "seg.onnx"
    # Exported at 128 x 128; 100 x 150 and 250 x 333 need the patch embedding's padding.
    diffs = export_tool.main([str(config), "--checkpoint", str(ckpt), "--format", "onnx",
                              "--out", str(out), "--size", "128x128",
                              "--check-sizes", "100x150", "250x333",
                              "320x192", "--tolerance", "1e-4"])
    assert set(diffs) == {"100x150", "250x333", "320x192"}
    assert max(diffs.values()) <= 1e-4
    card = json.loads(out.with_suffix(".onnx.json").read_text())
    assert card["kind"] == "segmentor" and card["dynamic_height_width"] == [64, 4096]
    assert card["classes"] == ["sky", "grass", "building", "ball"]
    import onnx

    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims[2:]] == [True, True]  # not fixed at 128
    assert "largest difference" in capsys.readouterr().out


def test_the_detector_backbone_and_neck_export_with_dynamic_sizes(tmp_path):
    target = export.load_target(str(_det_config(tmp_path)))
    path = export.export_model(target, tmp_path / "det.pt2", "exported-program", (160, 224))
    diffs = export.check_export(target, path, "exported-program", [(130, 200), (256, 192)])
    assert max(diffs.values()) <= 1e-4, diffs


def test_the_tool_names_a_bad_checkpoint_before_building_anything(seg_ckpt, tmp_path, capsys):
    ckpt, config = seg_ckpt
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(SystemExit, match=r"--checkpoint .*empty.ckpt is empty \(0 bytes\)"):
        export_tool.main([str(config), "--checkpoint", str(empty), "--out",
                          str(tmp_path / "x.onnx")])
    # A segmentation checkpoint given with the detection config: the task is named.
    with pytest.raises(SystemExit, match=r"is a segmentation checkpoint .* use it with"):
        export_tool.main([str(DET_DEMO), "--checkpoint", str(ckpt), "--out",
                          str(tmp_path / "x.onnx")])
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("output_size", [(2, 2), (3, 3), (6, 6), (3, 5)])
def test_the_onnx_pyramid_pooling_equals_adaptive_pooling_at_any_size(output_size):
    """UperNet's pooling, as exported to ONNX: bins from the input's size, torch's bins."""
    pool = export._exportable(nn.Sequential(nn.AdaptiveAvgPool2d(output_size)), "onnx")[0]
    assert isinstance(pool, export._MatrixAdaptiveAvgPool)
    for hw in [(8, 11), (16, 16), (7, 3), (33, 64), (1, 1)]:
        x = torch.randn(2, 4, *hw, generator=torch.Generator().manual_seed(hw[0]))
        torch.testing.assert_close(pool(x), nn.AdaptiveAvgPool2d(output_size)(x))
    # A global pool stays (ONNX has GlobalAveragePool), and torch.export keeps the layer.
    global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1))
    assert export._exportable(global_pool, "onnx") is global_pool
    assert isinstance(export._exportable(nn.Sequential(nn.AdaptiveAvgPool2d(output_size)),
                                         "exported-program")[0], nn.AdaptiveAvgPool2d)
