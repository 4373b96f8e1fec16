"""The demo dataset generator: real COCO / ADE20K formats, consistent masks, determinism."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from lightning_modules.demo_data import (
    CLASS_HUES,
    DEMO_DET_CLASSES,
    DEMO_SEG_CLASSES,
    HUE_JITTER,
    MIN_VISIBLE_AREA,
    make_ade_demo,
    make_coco_demo,
    make_demo_data,
)

# pycocotools' decode of a single RLE trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = dict(coco_train=8, coco_val=4, ade_train=6, ade_val=3, cls_train=12, cls_val=8)
TINY = dict(coco_train=2, coco_val=1, ade_train=2, ade_val=1, cls_train=4, cls_val=4)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, seed=0, **SMALL)
    return root


def load_coco(root: Path, split: str) -> COCO:
    return COCO(str(root / "coco" / "annotations" / f"instances_{split}2017.json"))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.mark.parametrize("split,count", [("train", SMALL["coco_train"]),
                                         ("val", SMALL["coco_val"])])
def test_coco_masks_and_boxes_agree(demo, split, count):
    coco = load_coco(demo, split)
    assert len(coco.imgs) == count
    assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == [1, 2, 3, 4]
    for img in coco.imgs.values():
        with Image.open(demo / "coco" / f"{split}2017" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert anns, "every image has at least one instance"
        union = np.zeros((img["height"], img["width"]), dtype=int)
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
            m = coco.annToMask(ann)
            assert m.shape == (img["height"], img["width"])
            assert int(m.sum()) == ann["area"] >= MIN_VISIBLE_AREA
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == \
                ann["bbox"]
            assert mask_utils.toBbox(ann["segmentation"]).tolist() == ann["bbox"]
            union += m
        assert union.max() == 1, "visible masks of one image are disjoint (occlusion applied)"


def test_coco_classes_and_overlap(demo):
    coco = load_coco(demo, "train")
    assert {a["category_id"] for a in coco.anns.values()} == set(range(1, 5))
    assert [c["name"] for c in coco.loadCats([1, 2, 3, 4])] == list(DEMO_DET_CLASSES)
    overlapping = [
        img_id for img_id in coco.imgs
        if any(iou(a["bbox"], b["bbox"]) > 0 for a, b in
               itertools.combinations(coco.loadAnns(coco.getAnnIds(imgIds=img_id)), 2))]
    assert overlapping
    sizes = {(i["height"], i["width"]) for i in coco.imgs.values()}
    assert len(sizes) > 1 and all(h != w for h, w in sizes)


@pytest.mark.parametrize("split,folder,count", [("train", "training", SMALL["ade_train"]),
                                                ("val", "validation", SMALL["ade_val"])])
def test_ade_layout_and_labels(demo, split, folder, count):
    base = demo / "ade" / "ADEChallengeData2016"
    images = sorted((base / "images" / folder).glob("*.jpg"))
    labels = sorted((base / "annotations" / folder).glob("*.png"))
    assert len(images) == count
    assert [p.stem for p in images] == [p.stem for p in labels]
    seen = np.zeros(len(DEMO_SEG_CLASSES) + 1, dtype=np.int64)
    for img_path, lab_path in zip(images, labels, strict=True):
        with Image.open(img_path) as im, Image.open(lab_path) as lab:
            assert lab.mode == "L" and lab.size == im.size
            arr = np.asarray(lab)
        assert arr.max() <= len(DEMO_SEG_CLASSES)
        seen += np.bincount(arr.ravel(), minlength=seen.size)
    assert (seen[1:] > 0).all(), "every class occurs"
    assert 0 < seen[0] < 0.05 * seen.sum(), "a few 'other' pixels, not many"


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    make_demo_data(tmp_path / "a", seed=3, **TINY)
    make_demo_data(tmp_path / "b", seed=3, **TINY)
    make_demo_data(tmp_path / "c", seed=4, **TINY)
    a, b, c = (tree_bytes(tmp_path / k) for k in "abc")
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if a[k] != c[k]]
    assert all(k in differing for k in a if k.endswith((".jpg", ".png")))


def test_skips_when_manifest_matches_and_regenerates_otherwise(tmp_path):
    first = make_coco_demo(tmp_path, num_train=2, num_val=1, seed=0)
    assert not first["skipped"]
    ann = tmp_path / "coco" / "annotations" / "instances_train2017.json"
    stamp = ann.stat().st_mtime_ns
    again = make_coco_demo(tmp_path, num_train=2, num_val=1, seed=0)
    assert again["skipped"] and ann.stat().st_mtime_ns == stamp
    assert {k: v for k, v in again.items() if k != "skipped"} == \
        {k: v for k, v in first.items() if k != "skipped"}

    # Fewer images: the stale one is removed, not left for a directory-listing dataset to find.
    make_coco_demo(tmp_path, num_train=1, num_val=1, seed=0)
    assert len(list((tmp_path / "coco" / "train2017").glob("*.jpg"))) == 1
    assert len(json.loads(ann.read_text())["images"]) == 1

    # A missing file invalidates the manifest too.
    make_ade_demo(tmp_path, num_train=1, num_val=1, seed=0)
    label = next((tmp_path / "ade").rglob("*.png"))
    label.unlink()
    assert not make_ade_demo(tmp_path, num_train=1, num_val=1, seed=0)["skipped"]
    assert label.is_file()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["coco"]["complete"] and manifest["ade"]["complete"]


def test_refuses_to_write_over_foreign_files(tmp_path):
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    (tmp_path / "coco" / "train2017" / "real.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="did not write"):
        make_coco_demo(tmp_path, num_train=1, num_val=1)
    assert (tmp_path / "coco" / "train2017" / "real.jpg").read_bytes() == b"not ours"


def test_imagenet_layout_balanced_classes(demo):
    root = demo / "imagenet"
    for split, count in (("train", SMALL["cls_train"]), ("val", SMALL["cls_val"])):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == sorted(DEMO_DET_CLASSES)
        sizes = [len(list((root / split / c).glob("*.JPEG"))) for c in DEMO_DET_CLASSES]
        assert sizes == [count // len(DEMO_DET_CLASSES)] * len(DEMO_DET_CLASSES)


def test_object_colours_lie_in_their_class_hue_band(demo):
    """Each class keeps to its hue band (the colour cue the demo relies on), measured on the
    decoded JPEG pixels under every instance mask."""
    import colorsys

    coco = load_coco(demo, "train")
    checked = 0
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs(ann["image_id"])[0]
        pixels = np.asarray(Image.open(demo / "coco" / "train2017" / img["file_name"]))
        mask = coco.annToMask(ann).astype(bool)
        r, g, b = np.median(pixels[mask], axis=0) / 255.0
        hue = colorsys.rgb_to_hsv(r, g, b)[0]
        centre = CLASS_HUES[coco.loadCats(ann["category_id"])[0]["name"]]
        dist = min(abs(hue - centre), 1 - abs(hue - centre))  # hue is circular
        assert dist < HUE_JITTER + 0.05, (img["file_name"], ann["category_id"], hue)
        checked += 1
    assert checked >= SMALL["coco_train"]
