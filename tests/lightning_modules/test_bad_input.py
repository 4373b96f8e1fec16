"""Bad input anywhere gets one clear answer through the real entry points (issue 19): annotation
files, segmentation label maps, images, configs and checkpoints. Each test asserts the error's
type and that its message names the file or key and the fix (or, for input that is handled,
that it loads right), and that nothing already written is lost.

(Bad boxes, missing / corrupt images and label maps of the wrong size: test_reliability.py.)"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import zlib
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_modules import cli as mm_cli
from lightning_modules.checkpoint_checks import CheckpointError
from lightning_modules.cli import train_main
from lightning_modules.coco_checks import AnnotationFileError
from lightning_modules.config_checks import ConfigError, check_config, check_yaml_configs
from lightning_modules.data_checks import BadSampleError, load_rgb
from lightning_modules.detection import DetectionModule
from lightning_modules.mm_bridge import MMDataModule, build_task, load_config
from lightning_modules.segmentation import SegmentationModule

ROOT = Path(__file__).resolve().parents[2]
SEG_DEMO = ROOT / "configs/demo/fpn_inline-pvt-demo_demo-ade.py"
DET_DEMO = ROOT / "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"
CLS_DEMO = ROOT / "configs/classification/demo_inline_pvt.yaml"
SPLITS = ("train", "val", "test")


# ---- shared data and runs ----------------------------------------------------------------------

def det_opts(data: Path, **more) -> dict:
    coco = str(data / "coco") + "/"
    opts = {"val_evaluator.ann_file": coco + "annotations/instances_val2017.json",
            "test_evaluator.ann_file": coco + "annotations/instances_val2017.json"}
    for split in SPLITS:
        opts.update({f"{split}_dataloader.dataset.data_root": coco,
                     f"{split}_dataloader.num_workers": 0,
                     f"{split}_dataloader.persistent_workers": False})
    return {**opts, **more}


def seg_opts(data: Path, **more) -> dict:
    ade = str(data / "ade" / "ADEChallengeData2016")
    opts = {"train_dataloader.batch_size": 2}
    for split in SPLITS:
        opts.update({f"{split}_dataloader.dataset.data_root": ade,
                     f"{split}_dataloader.num_workers": 0,
                     f"{split}_dataloader.persistent_workers": False})
    return {**opts, **more}


def cli(config: Path, work: Path, opts: dict, *extra: str, max_steps: int | None = 2
        ) -> list[str]:
    """A training tool's arguments; ``max_steps`` bounds a run that a check failed to stop."""
    bound = ["--trainer.max_steps", str(max_steps)] if max_steps else []
    return [str(config), "--work-dir", str(work), "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", *bound, *extra,
            "--cfg-options", *[f"{k}={v}" for k, v in opts.items()]]


def recording(cls):
    """``cls`` counting its constructions: a check that fires 'before any model is built' leaves
    the count at 0."""
    class Recording(cls):
        built: list[int] = []

        def __init__(self, *args, **kwargs):
            Recording.built.append(1)
            super().__init__(*args, **kwargs)
    return Recording


def seg_train(data: Path, **more):
    return MMDataModule(load_config(SEG_DEMO, seg_opts(data, **more))).dataset("train")


def det_dataset(data: Path, split: str = "train", **more):
    return MMDataModule(load_config(DET_DEMO, det_opts(data, **more))).dataset(split)


@pytest.fixture(scope="module")
def seg_ckpt(demo, tmp_path_factory) -> Path:
    """last.ckpt of a 2-step segmentation run on the demo data."""
    work = tmp_path_factory.mktemp("seg_run")
    train_main(SegmentationModule, cli(SEG_DEMO, work, seg_opts(
        demo, **{"train_cfg.max_iters": 2, "train_cfg.val_interval": 2}),
        "--trainer.limit_val_batches", "0"))
    return work / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def det_ckpt(demo, tmp_path_factory) -> Path:
    """last.ckpt of a one-step detection run (4 images, batch 4, one epoch)."""
    work = tmp_path_factory.mktemp("det_run")
    # Validation every epoch (and none run): the checkpoint is written at the epoch's end.
    train_main(DetectionModule, cli(DET_DEMO, work, det_opts(demo, **{"train_cfg.val_interval": 1}),
                                    "--trainer.max_epochs", "1", "--trainer.limit_val_batches",
                                    "0"))
    return work / "checkpoints" / "last.ckpt"


# ---- annotation files ---------------------------------------------------------------------------

def coco_json(data: Path, split: str = "train") -> Path:
    return data / "coco" / "annotations" / f"instances_{split}2017.json"


def edit_coco(path: Path, edit) -> dict:
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    return coco


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[:1000], r"line 1, column \d+ \(byte \d+\); the file ends there, cut "
                               r"short \(1000 bytes\).* Copy it again"),
    (lambda text: text.replace('"images"', "images", 1), r"not valid JSON: Expecting property "
                                                         r"name .* line 1, column \d+ .*fix it"),
    (lambda text: "", r"is empty \(0 bytes\).* Copy it again"),
])
def test_a_broken_annotation_file_stops_training_before_any_model(data, tmp_path, damage,
                                                                  message):
    path = coco_json(data)
    path.write_text(damage(path.read_text()))
    Recording = recording(DetectionModule)
    with pytest.raises(AnnotationFileError, match=f"annotation file {path} .*{message}"):
        train_main(Recording, cli(DET_DEMO, tmp_path / "work", det_opts(data)))
    assert not Recording.built
    assert not (tmp_path / "work").exists()  # nothing written


def _drop(key):
    return lambda coco: coco.pop(key)


def _first_ann(coco) -> dict:
    return coco["annotations"][0]


def _set_first(**fields):
    return lambda coco: _first_ann(coco).update(fields)


@pytest.mark.parametrize("edit, error, message", [
    (_drop("annotations"), AnnotationFileError,
     r"no 'annotations' key \(its keys: \['categories', 'images'.*not a COCO instances file"),
    (_drop("images"), AnnotationFileError, r"no 'images' key"),
    (_drop("categories"), AnnotationFileError, r"no 'categories' key"),
    (lambda c: c["images"][1].update(id=c["images"][0]["id"]), AnnotationFileError,
     r"1 image id\(s\) used more than once \(1\): ids must be unique"),
    (lambda c: c["categories"].pop(3), AnnotationFileError,
     r"the config's classes \['star'\] are not categories of this file, which has 3: "
     r"\['circle', 'rectangle', 'triangle'\].* metainfo=dict\(classes="),
    (_set_first(bbox=[1.0, 2.0, 3.0]), BadSampleError,
     r"1 image\(s\) with bad annotations:\n  000000000001\.jpg \(image id 1\): annotation 1: "
     r"bbox \[1\.0, 2\.0, 3\.0\] is not four numbers .*skip_bad_samples=True"),
    (_set_first(category_id=99), BadSampleError,
     r"annotation 1: category_id 99 is not in 'categories'"),
    (_set_first(image_id=777), BadSampleError,
     r"1 annotation\(s\) whose image_id is not an id in 'images'.*: annotation 1 \(image_id 777\)"),
    (_set_first(segmentation=[[1, 2, 3, 4, 5, 6, 7]]), BadSampleError,
     r"annotation 1: polygon 0 has 7 coordinates \(odd: x, y pairs expected\)"),
    (_set_first(segmentation={"size": [10, 10], "counts": [100]}), BadSampleError,
     r"annotation 1: RLE of size \[10, 10\] on a \d+ x \d+ image"),
])
def test_annotation_files_of_the_wrong_shape_are_named(data, edit, error, message):
    path = coco_json(data)
    edit_coco(path, edit)
    with pytest.raises(error, match=f"{path}") as err:
        det_dataset(data)
    assert err.match("(?s)" + message)


def test_an_rle_whose_counts_do_not_fill_its_image_is_named(data):
    def edit(coco):
        img = coco["images"][0]
        _first_ann(coco)["segmentation"] = {"size": [img["height"], img["width"]],
                                            "counts": [5, 10]}
    edit_coco(coco_json(data), edit)
    with pytest.raises(BadSampleError, match=r"RLE counts add up to 15 pixels, its \d+ x \d+ "
                                             r"image has \d+"):
        det_dataset(data)


def test_short_polygons_are_listed_and_bad_annotations_skipped_when_asked(data, caplog):
    clean = len(det_dataset(data))

    def edit(coco):
        anns = coco["annotations"]
        anns[0]["segmentation"] = [[1, 1, 5, 5], [10, 10, 20, 10, 20, 20]]  # 2 points, 3 points
        bad = next(a for a in anns if a["image_id"] != anns[0]["image_id"])
        bad["bbox"] = "10 10 5 5"
    coco = edit_coco(coco_json(data), edit)
    with caplog.at_level(logging.WARNING):
        train = det_dataset(data, skip_bad_samples=True)
    assert "1 image(s) with polygons mmdet drops" in caplog.text
    assert "annotation 1: polygon(s) [0] of fewer than 3 points" in caplog.text
    assert len(train) == clean - 1 and "left out" in caplog.text
    # Evaluation data is never skipped: the same problem in the val file stops.
    edit_coco(coco_json(data, "val"), lambda c: _first_ann(c).update(bbox=[1, 2]))
    with pytest.raises(BadSampleError, match="evaluation data is never skipped"):
        det_dataset(data, "val", skip_bad_samples=True)
    assert coco  # the file was edited as described


def test_the_metrics_own_annotation_file_is_checked_before_any_model(data, tmp_path):
    Recording = recording(DetectionModule)
    missing = tmp_path / "nowhere.json"
    with pytest.raises(FileNotFoundError, match=rf"val_evaluator\.ann_file: {missing} does not "
                                                rf"exist.*--cfg-options val_evaluator\.ann_file"):
        build_task(load_config(DET_DEMO, det_opts(data, **{"val_evaluator.ann_file":
                                                           str(missing)})), module_cls=Recording)
    other = tmp_path / "other.json"
    other.write_text(coco_json(data, "val").read_text()[:100])
    with pytest.raises(AnnotationFileError, match=f"annotation file {other} is not valid JSON"):
        build_task(load_config(DET_DEMO, det_opts(data, **{"val_evaluator.ann_file": other})),
                   module_cls=Recording)
    assert not Recording.built


# ---- segmentation label maps ---------------------------------------------------------------------

def label_of(train, index: int) -> Path:
    return Path(train.get_data_info(index)["seg_map_path"])


def test_label_values_outside_the_classes_name_the_file_values_and_config(data, caplog):
    train = seg_train(data)
    path = label_of(train, 1)
    label = np.array(Image.open(path))
    label[:3, :3], label[-3:, -3:] = 9, 200  # 4 classes (1..4 stored, reduce_zero_label)
    Image.fromarray(label).save(path)
    with pytest.raises(BadSampleError, match=rf"label map {path} holds values 9, 200 outside "
                                             r"the 4 classes of the config: with "
                                             r"reduce_zero_label=True the stored values must be "
                                             r"0 \(ignored\), 1\.\.4 .*reduce_zero_label"):
        train[1]
    train[0]  # the others load
    with caplog.at_level(logging.WARNING):  # a bad sample: skipped when asked
        sample = seg_train(data, skip_bad_samples=True)[1]
    assert sample["data_samples"].seg_map_path != str(path) and str(path) in caplog.text


def test_colour_and_16_bit_label_maps_are_named(data):
    train = seg_train(data)
    colour, wide = label_of(train, 0), label_of(train, 1)
    Image.open(colour).convert("RGB").save(colour)
    label = np.array(Image.open(wide)).astype(np.uint16)
    label[0, 0] = 300
    cv2.imwrite(str(wide), label)
    with pytest.raises(BadSampleError, match=rf"label map {colour} is a colour image \(RGB\), "
                                             r"but label maps hold one class index per pixel"
                                             r".*Convert the colours to class indices"):
        train[0]
    with pytest.raises(BadSampleError, match=rf"label map {wide} is 16-bit and holds values up "
                                             r"to 300; .* would wrap into other classes"):
        train[1]


def test_a_split_without_its_label_maps_is_named_before_training(data, tmp_path):
    labels = data / "ade" / "ADEChallengeData2016" / "annotations" / "training"
    for p in labels.iterdir():
        p.rename(p.with_suffix(".bmp"))  # another suffix than the config's '.png'
    Recording = recording(SegmentationModule)
    with pytest.raises(FileNotFoundError, match=r"none of the 4 label map files is where the "
                                                r"config puts them, .*seg_map_suffix '\.png'.*"
                                                r"it holds 4 \.bmp"):
        train_main(Recording, cli(SEG_DEMO, tmp_path / "work", seg_opts(data)))
    assert not Recording.built
    # One missing: a bad sample, named; left out when skipping.
    first = sorted(labels.iterdir())[0]
    for p in labels.iterdir():
        p.rename(p.with_suffix(".png"))
    first.with_suffix(".png").unlink()
    with pytest.raises(BadSampleError, match=rf"(?s)label map file not found: "
                                             rf"{first.with_suffix('.png')}.*skip_bad_samples"):
        seg_train(data)
    assert len(seg_train(data, skip_bad_samples=True)) == 3


def test_an_empty_image_folder_names_what_it_holds(data):
    images = data / "ade" / "ADEChallengeData2016" / "images" / "validation"
    for p in images.iterdir():
        p.rename(p.with_suffix(".jpeg"))
    with pytest.raises(ValueError, match=r"the dataset is empty: .*images/validation.* with "
                                         r"img_suffix='\.jpg' \(it holds 2 \.jpeg\)"):
        MMDataModule(load_config(SEG_DEMO, seg_opts(data))).dataset("val")


# ---- images -------------------------------------------------------------------------------------

def exif_rotated(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Write a JPEG stored ``size`` (w, h) with EXIF orientation 6 (rotate 90 degrees clockwise to
    view); returns the upright RGB pixels as the decoders should give them."""
    w, h = size
    stored = np.zeros((h, w, 3), np.uint8)
    stored[:, : w // 2] = (250, 0, 0)
    stored[:, w // 2:] = (0, 0, 250)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, format="JPEG", exif=exif, quality=95)
    return np.rot90(stored, k=-1)


def test_exif_rotated_images_load_upright_in_training_and_inference(data, seg_ckpt, tmp_path):
    train = seg_train(data)
    info = train.get_data_info(0)
    img, seg = Path(info["img_path"]), Path(info["seg_map_path"])
    w, h = Image.open(img).size
    upright = exif_rotated(img, (h, w))  # stored sideways: upright it is w x h again
    sample = train[0]  # the label map (w x h) matches the upright image
    assert sample["data_samples"].ori_shape == (h, w)
    assert np.abs(np.asarray(load_rgb(str(img))).astype(int) - upright).mean() < 8
    # Inference reads the image the same way: the picture is upright.
    from lightning_modules.inference import infer
    (picture,) = infer(SEG_DEMO, seg_ckpt, [str(img)], tmp_path / "pictures")
    assert Image.open(picture).size == (w, h)
    # A label map drawn on the stored (sideways) pixels is named, with the EXIF cause.
    Image.open(seg).transpose(Image.Transpose.ROTATE_90).save(seg)
    with pytest.raises(BadSampleError, match=rf"label map {seg} is {h} x {w}, but its image "
                                             rf"{img} has EXIF orientation 6 and loads rotated"):
        train[0]


def test_grayscale_cmyk_and_16_bit_images_load_as_rgb_the_same_in_both_loaders(data):
    train = det_dataset(data)
    paths = [Path(train.get_data_info(i)["img_path"]) for i in range(3)]
    sizes = [Image.open(p).size for p in paths]
    gray = (np.arange(sizes[0][0] * sizes[0][1]) % 251).reshape(sizes[0][::-1]).astype(np.uint8)
    Image.fromarray(gray).save(paths[0], format="JPEG", quality=100)
    Image.new("CMYK", sizes[1], (0, 255, 255, 0)).save(paths[1], format="JPEG")  # red
    wide = (np.arange(sizes[2][0] * sizes[2][1]) * 37 % 65536).reshape(sizes[2][::-1])
    cv2.imwrite(str(paths[2]) + ".png", wide.astype(np.uint16))
    Path(str(paths[2]) + ".png").rename(paths[2])  # a 16-bit PNG under the listed name
    for i, path in enumerate(paths):
        mm = train[i]["inputs"].numpy()  # 3 x H x W, BGR, resized: compare per channel means
        cls = np.asarray(load_rgb(str(path)))
        assert mm.shape[0] == 3 and cls.shape[2] == 3
        assert np.allclose(mm[::-1].mean(axis=(1, 2)), cls.mean(axis=(0, 1)), atol=3)
    assert np.asarray(load_rgb(str(paths[1])))[0, 0].tolist() == pytest.approx([255, 0, 0],
                                                                               abs=2)
    high_byte = (wide >> 8).astype(np.uint8)  # what OpenCV reads; PIL alone would clip at 255
    assert np.array_equal(np.asarray(load_rgb(str(paths[2])))[..., 0], high_byte)


def test_empty_unsupported_and_unchanged_images_are_named(data):
    train = det_dataset(data)
    empty, svg, tga = (Path(train.get_data_info(i)["img_path"]) for i in range(3))
    empty.write_bytes(b"")
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')
    Image.open(tga).convert("RGB").save(tga, format="TGA")  # PIL reads it, OpenCV does not
    with pytest.raises(BadSampleError, match=rf"image {empty} is empty \(0 bytes\).*Replace or "
                                             "remove it"):
        train[0]
    with pytest.raises(BadSampleError, match=rf"cannot read image {svg} \(no image format "
                                             r"recognised\).*convert it to JPEG or PNG"):
        train[1]
    with pytest.raises(BadSampleError, match=rf"image {tga} is a TGA file, which the pipeline's "
                                             r"decoder \(OpenCV.*convert it to JPEG or PNG"):
        train[2]
    assert np.asarray(load_rgb(str(tga))).shape[2] == 3  # classification (PIL) reads TGA
    with pytest.raises(BadSampleError, match=f"image {empty} is empty"):
        load_rgb(str(empty))
    # A pipeline that loads images unchanged gets a grayscale one without three channels.
    gray = Path(train.get_data_info(3)["img_path"])
    Image.open(gray).convert("L").save(gray, format="JPEG")
    unchanged = det_dataset(data, **{"train_dataloader.dataset.pipeline.0.color_type":
                                     "unchanged"})
    with pytest.raises(BadSampleError, match=rf"image {gray} is L \(not RGB\), and the pipeline "
                                             r"loads images unchanged.*color_type='color'"):
        unchanged[3]


def bomb_png(path: Path, width: int, height: int) -> None:
    """A PNG header claiming ``width`` x ``height`` (gray) with a few bytes of data: what a
    decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_the_decompression_bomb_guard_names_the_image_and_its_limit(data):
    train = det_dataset(data)
    bomb = Path(train.get_data_info(0)["img_path"])
    bomb_png(bomb, 20000, 20000)
    with pytest.raises(BadSampleError, match=rf"image {bomb} is 20000 x 20000 = 400,000,000 "
                                             r"pixels, over the limit of 178,956,970 .*"
                                             r"--cfg-options max_image_pixels=N"):
        train[0]
    with pytest.raises(BadSampleError, match=f"image {bomb} is 20000 x 20000"):
        load_rgb(str(bomb))
    # The limit is the config's: a small one refuses the ordinary demo images too.
    small = det_dataset(data, max_image_pixels=1000)
    with pytest.raises(BadSampleError, match=r"over the limit of 1,000 "):
        small[1]
    folder = data / "imagenet"
    from lightning_modules.classification import ImageFolderDataModule
    dm = ImageFolderDataModule(str(folder), num_workers=0, img_size=32, auto_augment=None,
                               re_prob=0.0, max_image_pixels=100)
    with pytest.raises(BadSampleError, match=r"over the limit of 100 .*--data\.max_image_pixels"):
        dm.dataset("val")[0]


# ---- configs ------------------------------------------------------------------------------------

def test_misspelt_keys_are_named_with_close_matches_before_anything_is_built(data, tmp_path):
    Recording = recording(DetectionModule)
    opts = det_opts(data, **{"model.roi_head.bbox_head.num_clases": 4,
                             "train_dataloader.batch_szie": 2,
                             "optim_wrapper.optimizer.weight_decy": 0.1,
                             "optim_wrapper.paramwise_cfg.norm_decay_mul": 0.0,
                             "model.backbone.embed_dim": 32})
    with pytest.raises(ConfigError) as err:
        train_main(Recording, cli(DET_DEMO, tmp_path / "work", opts))
    msg = str(err.value)
    assert f"{DET_DEMO}: 5 unknown key(s)" in msg
    for line in ["model.roi_head.bbox_head.num_clases: not a key of Shared2FCBBoxHead (did you "
                 "mean num_classes",
                 "train_dataloader.batch_szie: not a key of a data loader (did you mean "
                 "batch_size",
                 "optim_wrapper.optimizer.weight_decy: not a key of AdamW (did you mean "
                 "weight_decay?)",
                 "optim_wrapper.paramwise_cfg.norm_decay_mul: not a key of paramwise_cfg",
                 "model.backbone.embed_dim: not a key of InLinePVTBackbone (did you mean "
                 "embed_dims?)", "Fix the spelling"]:
        assert line in msg
    assert not Recording.built and not (tmp_path / "work").exists()


MM_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.py") if "_base_" not in p.parts)
# One config per model type, backbone family and pipeline kind: what the key check meets.
REPRESENTATIVE = ["demo/fpn_inline-pvt-demo_demo-ade.py",
                  "demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py",
                  "inline_swin/mask-rcnn_inline-swin-t_fpn_ms-3x_coco.py",
                  "inline_cswin/upernet_inline-cswin-t_8xb2-160k_ade20k-512x512.py",
                  "inline_pvt/retinanet_inline-pvt-t_fpn_1x_coco.py",
                  "l2vit/mask-rcnn_l2vit-t_fpn_1x_coco.py"]


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_the_key_check_passes_the_shipped_configs(name):
    check_config(load_config(ROOT / "configs" / name))  # no false alarm


@pytest.mark.slow
@pytest.mark.parametrize("path", MM_CONFIGS, ids=lambda p: p.name)
def test_the_key_check_passes_every_shipped_config(path):
    check_config(load_config(path))


def test_the_yaml_check_passes_the_shipped_classification_configs():
    yamls = sorted((ROOT / "configs" / "classification").glob("*.yaml"))
    check_yaml_configs([arg for p in yamls for arg in ("-c", str(p))])
    assert len(yamls) == 17


def test_a_missing_base_and_a_syntax_error_name_the_file_at_fault(tmp_path):
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "mask-rcnn_fpn.py").write_text("_base_ = ['./runtimee.py']\n")
    (tmp_path / "_base_" / "runtime.py").write_text("default_scope = 'mmdet'\n")
    top = tmp_path / "top.py"
    top.write_text("_base_ = ['./_base_/mask-rcnn_fpn.py']\n")
    with pytest.raises(ConfigError, match=rf"config {top}: the _base_ './runtimee.py' listed in "
                                          rf"{tmp_path}/_base_/mask-rcnn_fpn.py does not exist "
                                          r".*relative to the folder of the file that lists "
                                          r"them; did you mean runtime.py\?"):
        load_config(top)
    (tmp_path / "_base_" / "mask-rcnn_fpn.py").write_text(
        "_base_ = ['./runtime.py']\nmodel = dict(type='X',\n")
    with pytest.raises(ConfigError, match=rf"config {tmp_path}/_base_/mask-rcnn_fpn.py, line 2, "
                                          r"column \d+: syntax error: '\(' was never closed"):
        load_config(top)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    from lightning_modules.classification import cli_main

    bad = tmp_path / "bad.yaml"
    bad.write_text(CLS_DEMO.read_text().replace("max_epochs: 8", "max_epochs: [8"))
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "max_epochs" in t)
    with pytest.raises(ConfigError, match=rf"config {bad}, line {line + 1}, column \d+: YAML "
                                          r"syntax error: .*Fix the file"):
        cli_main(["fit", "-c", str(bad)], run=False)


def test_a_data_root_that_does_not_exist_is_named_before_any_model(data, tmp_path):
    Recording = recording(SegmentationModule)
    gone = data / "ade" / "ADEChallengeData2017"
    key = r"train_dataloader\.dataset\.data_root"
    with pytest.raises(FileNotFoundError, match=rf"(?s){key}: folder {gone} does not exist \(in "
                                                r".*: did you mean ADEChallengeData2016\?\)"
                                                rf".*--cfg-options {key}=PATH"):
        train_main(Recording, cli(SEG_DEMO, tmp_path / "work", seg_opts(
            data, **{"train_dataloader.dataset.data_root": gone})))
    assert not Recording.built
    from lightning_modules.classification import ImageFolderDataModule
    with pytest.raises(FileNotFoundError, match=rf"data_dir {tmp_path / 'nowhere'} does not "
                                                r"exist .*--data\.data_dir"):
        ImageFolderDataModule(str(tmp_path / "nowhere"))


def test_a_heads_class_count_other_than_the_datasets_is_named(data):
    with pytest.raises(ConfigError, match=r"model\.decode_head\.num_classes=150, but the "
                                          r"dataset has 4 classes \(sky, grass, building, ball\)"
                                          r".*num_classes=4"):
        build_task(load_config(SEG_DEMO, seg_opts(data, **{"model.decode_head.num_classes": 150})))


# ---- checkpoints --------------------------------------------------------------------------------

def pretrained(path: Path) -> dict:
    """--cfg-options giving the demo backbone (init_cfg=None) a Pretrained file."""
    key = "model.backbone.init_cfg"
    return {f"{key}._delete_": True, f"{key}.type": "Pretrained", f"{key}.checkpoint": path}


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"", r"is empty \(0 bytes\).*Use another checkpoint"),
    (lambda b: b[: len(b) // 2], r"is truncated or corrupt: its end is missing \([\d,]+ bytes\)"
                                 r".*Use another"),
    (lambda b: b'{"state_dict": {}}', r"is not a torch checkpoint: it looks like a JSON file"),
])
def test_unreadable_checkpoints_are_named_by_every_loader(data, tmp_path, seg_ckpt, damage,
                                                         message):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(damage(seg_ckpt.read_bytes()))
    Recording = recording(SegmentationModule)
    with pytest.raises(CheckpointError, match=rf"checkpoint {bad} {message}"):  # the test tool
        mm_cli.test_main(Recording, [str(SEG_DEMO), str(bad)])
    assert not Recording.built
    with pytest.raises(CheckpointError, match=rf"{bad} {message}"):  # resume
        train_main(Recording, cli(SEG_DEMO, tmp_path / "w", seg_opts(data), "--resume", str(bad)))
    with pytest.raises(CheckpointError, match=rf"model\.backbone\.init_cfg\.checkpoint \(init_cfg "
                                              rf"Pretrained\) {bad} {message}"):
        train_main(Recording, cli(SEG_DEMO, tmp_path / "w", seg_opts(data, **pretrained(bad))))
    assert not Recording.built
    from lightning_modules.inference import infer
    with pytest.raises(CheckpointError, match=rf"checkpoint {bad} {message}"):
        infer(SEG_DEMO, bad, [], tmp_path / "pictures")


def test_a_missing_pretrained_file_names_its_key_and_the_ways_out(data, tmp_path):
    gone = tmp_path / "pretrained" / "inline_pvt_tiny.pth"
    with pytest.raises(FileNotFoundError, match=rf"model\.backbone\.init_cfg\.checkpoint .*not "
                                                rf"found: {gone} \(its folder .* does not exist "
                                                r"either\)\. Download the weights there.*"
                                                r"model\.backbone\.init_cfg=None"):
        train_main(SegmentationModule, cli(SEG_DEMO, tmp_path / "w",
                                           seg_opts(data, **pretrained(gone))))


def test_a_broken_classifier_checkpoint_is_named_before_training(data, tmp_path):
    from lightning_modules.classification import cli_main

    empty = tmp_path / "inline_pvt_tiny.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"--model\.checkpoint {empty} is empty \(0 bytes\)"):
        cli_main(["fit", "-c", str(CLS_DEMO), "--data.data_dir", str(data / "imagenet"),
                  "--data.num_workers", "0", "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1",
                  "--checkpoint.dirpath", str(tmp_path / "cls"), "--model.checkpoint",
                  str(empty)])
    assert not (tmp_path / "cls").exists()  # stopped before any step or checkpoint
    with pytest.raises(CheckpointError, match=rf"--ckpt_path checkpoint {empty} is empty"):
        cli_main(["validate", "-c", str(CLS_DEMO), "--data.data_dir", str(data / "imagenet"),
                  "--data.num_workers", "0", "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(empty)])


def test_a_checkpoint_of_another_task_is_refused_naming_both_tasks(data, tmp_path, seg_ckpt,
                                                                 det_ckpt):
    Recording = recording(SegmentationModule)
    with pytest.raises(CheckpointError, match=rf"checkpoint {det_ckpt} is a detection checkpoint "
                                              r"\(its config has default_scope='mmdet'\), but "
                                              r"this is segmentation: use it with "
                                              r"tools/train_det\.py"):
        mm_cli.test_main(Recording, [str(SEG_DEMO), str(det_ckpt), "--cfg-options",
                                     *[f"{k}={v}" for k, v in seg_opts(data).items()]])
    assert not Recording.built
    from lightning_modules.inference import infer
    with pytest.raises(CheckpointError, match=rf"checkpoint {seg_ckpt} is a segmentation "
                                              r"checkpoint .* but this is detection"):
        infer(DET_DEMO, seg_ckpt, [], tmp_path / "pictures")
    # Restored by a Trainer without a tool in front: the module's hook says the same.
    module, datamodule = build_task(load_config(SEG_DEMO, seg_opts(data)))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(CheckpointError, match=f"checkpoint {det_ckpt} is a detection checkpoint"):
        trainer.test(module, datamodule=datamodule, ckpt_path=str(det_ckpt))
    from lightning_modules.classification import cli_main
    with pytest.raises(CheckpointError, match=rf"checkpoint {det_ckpt} is a detection checkpoint "
                                              r".* but this is classification"):
        cli_main(["validate", "-c", str(CLS_DEMO), "--data.data_dir", str(data / "imagenet"),
                  "--data.num_workers", "0", "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(det_ckpt)])


def test_resume_without_a_checkpoint_says_what_the_work_dir_holds(data, tmp_path):
    work = tmp_path / "work"
    args = cli(SEG_DEMO, work, seg_opts(data), "--resume")
    with pytest.raises(FileNotFoundError, match=rf"cannot resume: no checkpoint at "
                                                rf"{work}/checkpoints/last\.ckpt; the work dir "
                                                rf"{work} does not exist: was the run started "
                                                r"with another --work-dir"):
        train_main(SegmentationModule, args)
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "iter_2.ckpt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"it holds iter_2\.ckpt: resume from one with "
                                                rf"--resume {work}/checkpoints/iter_2\.ckpt"):
        train_main(SegmentationModule, args)
    from lightning_modules.classification import cli_main
    with pytest.raises(FileNotFoundError, match=rf"--ckpt_path last: no last\.ckpt in "
                                                rf"{tmp_path}/cls: nothing to resume"):
        cli_main(["fit", "-c", str(CLS_DEMO), "--data.data_dir", str(data / "imagenet"),
                  "--data.num_workers", "0", "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(tmp_path),
                  "--checkpoint.dirpath", str(tmp_path / "cls"), "--ckpt_path", "last"])


# ---- nothing already written is lost ---------------------------------------------------------

def digest(*paths: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_a_run_stopped_by_bad_input_keeps_its_last_checkpoint_and_logs(data, tmp_path):
    work = tmp_path / "work"
    opts = seg_opts(data, **{"train_cfg.max_iters": 2, "train_cfg.val_interval": 2})
    args = cli(SEG_DEMO, work, opts, "--trainer.limit_val_batches", "0", max_steps=None)
    train_main(SegmentationModule, args)
    last, config = work / "checkpoints" / "last.ckpt", work / SEG_DEMO.name
    written = sorted(p for p in work.rglob("*") if p.is_file())  # checkpoints, logs, config
    before = digest(*written)
    # Stopped before training (a misspelt key): nothing in the work dir changes.
    with pytest.raises(ConfigError, match="optim_wrapper.optimizer.lrr"):
        train_main(SegmentationModule, [*args, "optim_wrapper.optimizer.lrr=0.1", "--resume"])
    assert digest(*written) == before and sorted(p for p in work.rglob("*") if p.is_file()) \
        == written
    # Stopped during training (bad label maps, found as they load): the checkpoints and the
    # earlier logs are as they were; the resumed run's config copy and its new log folders
    # are its own.
    for label in (data / "ade" / "ADEChallengeData2016" / "annotations" / "training").iterdir():
        Image.fromarray(np.full_like(np.array(Image.open(label)), 77)).save(label)
    with pytest.raises(BadSampleError, match="holds values 77 outside the 4 classes"):
        train_main(SegmentationModule, [*args, "train_cfg.max_iters=4", "--resume"])
    kept = [p for p in written if p != config]
    assert digest(*kept) == {k: v for k, v in before.items() if k != str(config)}
    assert torch.load(last, weights_only=True)["global_step"] == 2  # still a usable checkpoint
