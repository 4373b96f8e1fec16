"""Deterministic generator of a small, real-format demo dataset (COCO instances, ADE20K and an
ImageNet-style image folder).

The data is small enough to train Mask R-CNN (MMDetection 3.x), UperNet (MMSegmentation 1.x) and
a classifier on 2 CPU cores in minutes, yet laid out exactly like the real datasets so the real
dataset classes read it unchanged:

    ROOT/coco/{train2017,val2017}/*.jpg
    ROOT/coco/annotations/instances_{train2017,val2017}.json     (masks as RLE)
    ROOT/ade/ADEChallengeData2016/images/{training,validation}/*.jpg
    ROOT/ade/ADEChallengeData2016/annotations/{training,validation}/*.png  (0 = other, 1..K)
    ROOT/imagenet/{train,val}/<class>/*.JPEG                     (one shape per image)
    ROOT/manifest.json                                           (what was generated, and how)

Detection: class = shape, each class within its own hue band; later objects occlude earlier ones
and every instance mask is its visible region. An object that would be tiny or mostly hidden is
not drawn at all, so every drawn pixel of an object belongs to an annotated instance.

Every image draws from its own generator seeded by (seed, dataset, split, index): the same seed
gives byte-identical files, and changing one split's count leaves the other split's files alone.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

DEMO_DET_CLASSES: tuple[str, ...] = ("circle", "rectangle", "triangle", "star")
DEMO_SEG_CLASSES: tuple[str, ...] = ("sky", "grass", "building", "ball")

# Bump when the drawing changes, so existing demo data whose manifest says otherwise regenerates.
GENERATOR_VERSION = 2
MANIFEST = "manifest.json"
DEFAULT_SIDE_RANGE = (128, 192)

MIN_VISIBLE_AREA = 30  # px: smaller visible fragments are not drawn
MIN_VISIBLE_FRACTION = 0.35  # an object more hidden than this is not drawn
OBJ_SIZE_RANGE = (0.08, 0.5)  # object extent as a fraction of the image's shorter side

_JPEG = dict(format="JPEG", quality=95, subsampling=0, optimize=False)  # 4:4:4 keeps edges sharp
_PNG = dict(format="PNG", compress_level=6, optimize=False)
_COCO_SPLITS = {"train": "train2017", "val": "val2017"}
_ADE_SPLITS = {"train": ("training", "train"), "val": ("validation", "val")}
_ADE_DIR = "ade/ADEChallengeData2016"
_SPLIT_ID = {"train": 0, "val": 1}
_DATASET_ID = {"coco": 0, "ade": 1, "imagenet": 2}
_DATA_ROOT = {"coco": "coco", "ade": _ADE_DIR, "imagenet": "imagenet"}  # a config's data_root
# Classification images are smaller than the detection ones and one object fills much of them.
DEFAULT_CLS_SIDE_RANGE = (64, 80)
CLS_OBJ_SIZE_RANGE = (0.35, 0.8)


# ----------------------------------------------------------------------------- drawing helpers

def _rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _DATASET_ID[dataset], _SPLIT_ID[split], index])


def _image_size(rng: np.random.Generator, side_range: Sequence[int]) -> tuple[int, int]:
    lo, hi = side_range
    h = int(rng.integers(lo, hi + 1))
    w = int(rng.integers(lo, hi + 1))
    if w == h and hi > lo:  # keep every image non-square, like real data
        w = w + 1 if w < hi else w - 1
    return h, w


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish low-frequency noise: a coarse random grid upsampled bilinearly."""
    gh = max(2, round(cells * h / max(h, w)))
    gw = max(2, round(cells * w / max(h, w)))
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR))


def _linear_ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A 0..1 ramp along a random direction."""
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    return (t - t.min()) / max(float(t.max() - t.min()), 1e-6)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _polygon_mask(points: Sequence[tuple[float, float]], h: int, w: int) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon(list(points), fill=1)
    return np.asarray(canvas, dtype=bool)


def _ellipse_mask(cx: float, cy: float, rx: float, ry: float, h: int, w: int) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    return np.asarray(canvas, dtype=bool)


def _save_jpeg(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, **_JPEG)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- detection

def _shape_geometry(rng: np.random.Generator, cls: int, d: float) -> dict[str, Any]:
    """Random shape of extent ``d`` px; ``radius`` bounds it, for placement inside the image."""
    angle = rng.uniform(0, 2 * math.pi)
    name = DEMO_DET_CLASSES[cls]
    if name == "circle":
        return dict(cls=cls, radius=d / 2, offsets=None)
    if name == "rectangle":
        # Aspect <= 0.8 keeps rectangles from looking like squares-or-circles at small sizes.
        a, b = d / 2, d * rng.uniform(0.35, 0.8) / 2
        corners = [(a, b), (-a, b), (-a, -b), (a, -b)]
    elif name == "triangle":
        r = d * 0.55  # a triangle covers less of its circle than the other shapes
        corners = [(r * math.cos(t), r * math.sin(t)) for t in
                   (2 * math.pi * k / 3 + rng.uniform(-0.2, 0.2) for k in range(3))]
    else:  # star
        outer, inner = d / 2, d / 2 * rng.uniform(0.38, 0.5)
        corners = [((outer, inner)[k % 2] * math.cos(math.pi * k / 5),
                    (outer, inner)[k % 2] * math.sin(math.pi * k / 5)) for k in range(10)]
    c, s = math.cos(angle), math.sin(angle)
    offsets = [(x * c - y * s, x * s + y * c) for x, y in corners]
    return dict(cls=cls, radius=max(math.hypot(x, y) for x, y in offsets), offsets=offsets)


def _coco_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = rng.uniform(25, 230, size=(2, 3)).astype(np.float32)
    img = c0 + (c1 - c0) * _linear_ramp(rng, h, w)[..., None]
    img += _smooth_noise(rng, h, w, int(rng.integers(3, 8)))[..., None] * rng.uniform(6, 22)
    for ch in range(3):  # a little colour blotching, not only brightness
        img[..., ch] += _smooth_noise(rng, h, w, int(rng.integers(2, 6))) * rng.uniform(2, 10)
    img += rng.normal(0, rng.uniform(3, 9), size=img.shape).astype(np.float32)
    return img


# Each class has its own hue band (as real classes have typical colours: the segmentation half's
# blue sky and green grass); shape still tells classes apart and saturation and brightness vary.
# Without the colour cue, a small backbone trained from scratch on 2 CPU cores learns these
# shapes too slowly for the demo's minutes (measured: chance-level classification after 500 steps).
CLASS_HUES = {"circle": 0.0, "rectangle": 0.33, "triangle": 0.62, "star": 0.15}
HUE_JITTER = 0.05


def _object_colour(rng: np.random.Generator, cls: int, avoid: list[np.ndarray]) -> np.ndarray:
    """A colour in the class's hue band, as far (in RGB) as the band allows from the background
    under the object and from other objects, so neighbouring instances stay separable."""
    hue = CLASS_HUES[DEMO_DET_CLASSES[cls]]
    best, best_dist = None, -1.0
    for _ in range(40):
        colour = _hsv(hue + rng.uniform(-HUE_JITTER, HUE_JITTER), rng.uniform(0.45, 1.0),
                      rng.uniform(0.4, 1.0))
        dist = min((float(np.linalg.norm(colour - a)) for a in avoid), default=1e9)
        if dist > best_dist:
            best, best_dist = colour, dist
        if dist >= 90:
            break
    return best


def _coco_sample(rng: np.random.Generator, index: int, side_range: Sequence[int],
                 max_objects: int, size_range: Sequence[float] = OBJ_SIZE_RANGE
                 ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image and its (class index, visible mask) instances, bottom to top; object extents
    are drawn log-uniformly from ``size_range`` times the image's shorter side."""
    h, w = _image_size(rng, side_range)
    bg = _coco_background(rng, h, w)
    short = min(h, w)
    for _ in range(100):
        n = int(rng.integers(1, max_objects + 1))
        classes = rng.integers(0, len(DEMO_DET_CLASSES), size=n)
        # The top object is always fully visible: cycling its class guarantees every class occurs
        # even in a handful of images (tests, tiny val splits).
        classes[-1] = index % len(DEMO_DET_CLASSES)
        objs: list[dict[str, Any]] = []
        for cls in classes:
            lo, hi = size_range
            d = max(short * math.exp(rng.uniform(math.log(lo), math.log(hi))), 10.0)
            g = _shape_geometry(rng, int(cls), d)
            r = min(g["radius"], (short - 2) / 2)
            if objs and rng.random() < 0.65:  # next to an earlier object, so they overlap
                other = objs[int(rng.integers(len(objs)))]
                dist = rng.uniform(0.25, 0.95) * (r + other["radius"])
                t = rng.uniform(0, 2 * math.pi)
                cx, cy = other["cx"] + dist * math.cos(t), other["cy"] + dist * math.sin(t)
            else:
                cx, cy = rng.uniform(r, w - 1 - r), rng.uniform(r, h - 1 - r)
            g["cx"], g["cy"] = float(np.clip(cx, r, w - 1 - r)), float(np.clip(cy, r, h - 1 - r))
            if g["offsets"] is None:
                g["mask"] = _ellipse_mask(g["cx"], g["cy"], g["radius"], g["radius"], h, w)
            else:
                pts = [(g["cx"] + x, g["cy"] + y) for x, y in g["offsets"]]
                g["mask"] = _polygon_mask(pts, h, w)
            objs.append(g)
        # Top-down: an object is kept when enough of it shows under the kept objects above it.
        # Dropping an object cannot change what shows of those above, so one pass suffices.
        covered = np.zeros((h, w), dtype=bool)
        kept: list[tuple[dict[str, Any], np.ndarray]] = []
        for g in reversed(objs):
            visible = g["mask"] & ~covered
            area = int(visible.sum())
            if area >= MIN_VISIBLE_AREA and area >= MIN_VISIBLE_FRACTION * g["mask"].sum():
                kept.append((g, visible))
                covered |= g["mask"]
        if kept and kept[0][0] is objs[-1]:
            break
    else:
        raise RuntimeError("could not lay out a demo image; is side_range far too small?")
    kept.reverse()

    img = bg
    colours: list[np.ndarray] = []
    for g, _ in kept:
        under = bg[g["mask"]].mean(axis=0)
        colour = _object_colour(rng, g["cls"], [under, *colours])
        colours.append(colour)
        # Shading and noise make objects textured rather than flat stickers.
        shade = (_linear_ramp(rng, h, w)[..., None] - 0.5) * rng.uniform(15, 50)
        noise = rng.normal(0, rng.uniform(2, 7), size=(h, w, 3)).astype(np.float32)
        img = np.where(g["mask"][..., None], colour + shade + noise, img)
    return _to_uint8(img), [(g["cls"], vis) for g, vis in kept]


def _coco_annotation(ann_id: int, image_id: int, cls: int, mask: np.ndarray) -> dict[str, Any]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id, "image_id": image_id, "category_id": cls + 1,
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        "area": int(mask.sum()), "iscrowd": 0,
        "segmentation": {"size": [int(s) for s in rle["size"]],
                         "counts": rle["counts"].decode("ascii")},
    }


def _coco_files(counts: dict[str, int]) -> list[str]:
    files = []
    for split, folder in _COCO_SPLITS.items():
        files.append(f"coco/annotations/instances_{folder}.json")
        files += [f"coco/{folder}/{i + 1:012d}.jpg" for i in range(counts[split])]
    return files


def make_coco_demo(root: str | os.PathLike, num_train: int = 120, num_val: int = 30,
                   side_range: tuple[int, int] = DEFAULT_SIDE_RANGE, max_objects: int = 5,
                   seed: int = 0) -> dict[str, Any]:
    """Write the COCO-format instance segmentation half under ``root/coco``.

    Image heights and widths are drawn independently from ``side_range`` (inclusive); each image
    has 1..``max_objects`` objects before occlusion culling. Skips the work when ``root``'s
    manifest already records the same settings and all files exist. Returns a summary dict.
    """
    root = Path(root)
    counts = {"train": num_train, "val": num_val}
    spec = dict(version=GENERATOR_VERSION, seed=seed, num_train=num_train, num_val=num_val,
                side_range=list(side_range), max_objects=max_objects)
    dirs = [root / "coco" / d for d in (*_COCO_SPLITS.values(), "annotations")]
    files = _coco_files(counts)
    done = _begin(root, "coco", spec, files, dirs)
    if done is not None:
        return done

    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(DEMO_DET_CLASSES)]
    summary: dict[str, Any] = {"classes": list(DEMO_DET_CLASSES), "splits": {}}
    for split, folder in _COCO_SPLITS.items():
        images, annotations = [], []
        for i in range(counts[split]):
            image_id = i + 1
            img, instances = _coco_sample(_rng(seed, "coco", split, i), i, side_range,
                                          max_objects)
            name = f"{image_id:012d}.jpg"
            _save_jpeg(img, root / "coco" / folder / name)
            images.append({"id": image_id, "file_name": name, "width": img.shape[1],
                           "height": img.shape[0]})
            for cls, mask in instances:
                annotations.append(_coco_annotation(len(annotations) + 1, image_id, cls, mask))
        coco = {"info": {"description": f"LAV demo shapes ({split}), seed {seed}",
                         "version": str(GENERATOR_VERSION)},
                "licenses": [], "images": images, "annotations": annotations,
                "categories": categories}
        ann_file = f"annotations/instances_{folder}.json"
        _write_json(root / "coco" / ann_file, coco)
        summary["splits"][split] = {"images": len(images), "instances": len(annotations),
                                    "img_dir": f"{folder}/", "ann_file": ann_file}
    return _finish(root, "coco", spec, files, summary)


# ----------------------------------------------------------------------------- segmentation

def _ade_sample(rng: np.random.Generator, side_range: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """An outdoor-like scene: sky over a wavy horizon, grass, buildings on the horizon, balls.
    Colours vary per image and textures are noisy, so no single colour threshold solves it."""
    sky, grass, building, ball = range(1, len(DEMO_SEG_CLASSES) + 1)
    h, w = _image_size(rng, side_range)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    x = np.arange(w, dtype=np.float32)
    horizon = rng.uniform(0.3, 0.6) * h
    for _ in range(2):
        horizon = horizon + rng.uniform(1, 0.06 * h) * np.sin(
            2 * math.pi * x / rng.uniform(0.4 * w, 2 * w) + rng.uniform(0, 2 * math.pi))
    label = np.where(yy < horizon[None, :], sky, grass).astype(np.uint8)

    # Sky: blue-to-cyan vertical gradient (lighter near the horizon) with soft clouds.
    top = _hsv(rng.uniform(0.53, 0.66), rng.uniform(0.45, 0.8), rng.uniform(0.55, 0.85))
    low = _hsv(rng.uniform(0.5, 0.6), rng.uniform(0.15, 0.4), rng.uniform(0.8, 1.0))
    t = np.clip(yy / np.maximum(horizon[None, :], 1), 0, 1)[..., None]
    sky_img = top + (low - top) * t
    clouds = np.clip(_smooth_noise(rng, h, w, int(rng.integers(4, 9))) - 0.3, 0, None)
    sky_img += (255 - sky_img) * np.clip(clouds * rng.uniform(0.3, 0.7), 0, 0.8)[..., None]
    sky_img += rng.normal(0, 3, size=sky_img.shape)

    # Grass: green-yellow, grainy, with horizontal streaks (mowing lines / perspective rows).
    g_col = _hsv(rng.uniform(0.18, 0.38), rng.uniform(0.4, 0.85), rng.uniform(0.3, 0.65))
    streaks = np.sin(yy * rng.uniform(0.4, 1.2) + rng.uniform(0, 6)) * rng.uniform(6, 16)
    grass_img = g_col + (streaks + _smooth_noise(rng, h, w, 6) * 10)[..., None]
    grass_img += rng.normal(0, 14, size=grass_img.shape)
    img = np.where((label == sky)[..., None], sky_img, grass_img)

    # Buildings: grey/beige/brick blocks standing on the horizon, with a grid of windows.
    for _ in range(int(rng.integers(1, 4))):
        bw = rng.uniform(0.1, 0.3) * w
        x0 = rng.uniform(-0.05 * w, w - bw * 0.7)
        xc = int(np.clip(x0 + bw / 2, 0, w - 1))
        bottom = horizon[xc] + rng.uniform(2, 0.08 * h)
        y0 = max(bottom - rng.uniform(0.15, 0.45) * h, 0.0)
        body = _polygon_mask([(x0, y0), (x0 + bw, y0), (x0 + bw, bottom), (x0, bottom)], h, w)
        mask = body.copy()
        if rng.random() < 0.4 and y0 > 4:  # gable roof
            roof = min(rng.uniform(0.1, 0.6) * bw, y0)
            mask |= _polygon_mask([(x0, y0), (x0 + bw / 2, y0 - roof), (x0 + bw, y0)], h, w)
        colour = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.05, 0.45), rng.uniform(0.45, 0.85))
        period, win = int(rng.integers(6, 11)), int(rng.integers(2, 4))
        windows = body & (((xx - x0) % period) >= period - win) & (((yy - y0) % period) >= 3)
        b_img = colour * np.where(windows, rng.uniform(0.35, 0.6), 1.0)[..., None]
        b_img = b_img + rng.normal(0, 6, size=b_img.shape)
        img = np.where(mask[..., None], b_img, img)
        label[mask] = building

    # Balls: saturated, radially shaded ellipses, mostly on the grass. Their 1-px rim blends ball
    # and background, so it is labelled 0 ("other"), as ADE leaves ambiguous boundaries unlabelled.
    for _ in range(int(rng.integers(1, 5))):
        r = rng.uniform(0.05, 0.16) * min(h, w)
        rx, ry = r, r * rng.uniform(0.8, 1.0)
        cx = rng.uniform(rx, w - 1 - rx)
        cy = rng.uniform(0, h - 1) if rng.random() < 0.25 else rng.uniform(
            min(float(horizon.mean()), h - 1 - ry), h - 1 - ry)
        mask = _ellipse_mask(cx, cy, rx, ry, h, w)
        if not mask.any():
            continue
        hue = rng.choice([0.0, 0.07, 0.13, 0.83, 0.92]) + rng.uniform(-0.02, 0.02)
        colour = _hsv(hue, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
        hx, hy = cx - 0.35 * rx, cy - 0.35 * ry  # highlight up-left
        dist = np.hypot((xx - hx) / rx, (yy - hy) / ry)
        ball_img = colour * np.clip(1.2 - 0.45 * dist, 0.4, 1.2)[..., None]
        ball_img = ball_img + rng.normal(0, 4, size=ball_img.shape)
        padded = np.pad(mask, 1)
        eroded = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        rim = mask & ~eroded
        alpha = np.where(rim, 0.5, mask.astype(np.float32))[..., None]
        img = alpha * ball_img + (1 - alpha) * img
        label[mask] = ball
        label[rim] = 0

    # Per-image exposure/contrast jitter plus sensor noise.
    img = (img - 128) * rng.uniform(0.85, 1.15) + 128 + rng.uniform(-15, 15)
    img += rng.normal(0, 3, size=img.shape)
    return _to_uint8(img), label


def _ade_files(counts: dict[str, int]) -> list[str]:
    files = []
    for split, (folder, prefix) in _ADE_SPLITS.items():
        for i in range(counts[split]):
            stem = f"ADE_{prefix}_{i + 1:08d}"
            files += [f"{_ADE_DIR}/images/{folder}/{stem}.jpg",
                      f"{_ADE_DIR}/annotations/{folder}/{stem}.png"]
    return files


def make_ade_demo(root: str | os.PathLike, num_train: int = 80, num_val: int = 20,
                  side_range: tuple[int, int] = DEFAULT_SIDE_RANGE,
                  seed: int = 0) -> dict[str, Any]:
    """Write the ADE20K-format semantic segmentation half under ``root/ade``.

    Labels follow ADE20K: 0 = other (mmseg's ``reduce_zero_label=True`` ignores it), classes
    1..K = ``DEMO_SEG_CLASSES``. Skips the work when ``root``'s manifest already records the same
    settings and all files exist. Returns a summary dict.
    """
    root = Path(root)
    counts = {"train": num_train, "val": num_val}
    spec = dict(version=GENERATOR_VERSION, seed=seed, num_train=num_train, num_val=num_val,
                side_range=list(side_range))
    base = root / _ADE_DIR
    dirs = [base / kind / folder for kind in ("images", "annotations")
            for folder, _ in _ADE_SPLITS.values()]
    files = _ade_files(counts)
    done = _begin(root, "ade", spec, files, dirs)
    if done is not None:
        return done

    summary: dict[str, Any] = {"classes": list(DEMO_SEG_CLASSES), "splits": {}}
    for split, (folder, prefix) in _ADE_SPLITS.items():
        hist = np.zeros(len(DEMO_SEG_CLASSES) + 1, dtype=np.int64)
        for i in range(counts[split]):
            img, label = _ade_sample(_rng(seed, "ade", split, i), side_range)
            stem = f"ADE_{prefix}_{i + 1:08d}"
            _save_jpeg(img, base / "images" / folder / f"{stem}.jpg")
            Image.fromarray(label).save(base / "annotations" / folder / f"{stem}.png", **_PNG)
            hist += np.bincount(label.ravel(), minlength=hist.size)
        summary["splits"][split] = {
            "images": counts[split], "img_dir": f"images/{folder}",
            "seg_map_dir": f"annotations/{folder}",
            "pixels": {"other": int(hist[0]),
                       **{n: int(c) for n, c in zip(DEMO_SEG_CLASSES, hist[1:], strict=True)}}}
    return _finish(root, "ade", spec, files, summary)


# ----------------------------------------------------------------------------- classification

def _imagenet_files(counts: dict[str, int]) -> list[str]:
    return [f"imagenet/{split}/{DEMO_DET_CLASSES[i % len(DEMO_DET_CLASSES)]}/{i + 1:06d}.JPEG"
            for split in ("train", "val") for i in range(counts[split])]


def make_imagenet_demo(root: str | os.PathLike, num_train: int = 800, num_val: int = 200,
                       side_range: tuple[int, int] = DEFAULT_CLS_SIDE_RANGE,
                       seed: int = 0) -> dict[str, Any]:
    """Write the ImageNet-layout classification half under ``root/imagenet``: one shape of
    ``DEMO_DET_CLASSES`` per image (class = shape, cycling, so the classes are balanced) on the
    detection half's textured backgrounds, so that a backbone pre-trained here transfers to the
    detection demo. Skips the work when the manifest records the same settings."""
    root = Path(root)
    counts = {"train": num_train, "val": num_val}
    spec = dict(version=GENERATOR_VERSION, seed=seed, num_train=num_train, num_val=num_val,
                side_range=list(side_range))
    dirs = [root / "imagenet" / split / c for split in counts for c in DEMO_DET_CLASSES]
    files = _imagenet_files(counts)
    done = _begin(root, "imagenet", spec, files, dirs)
    if done is not None:
        return done
    summary: dict[str, Any] = {"classes": list(DEMO_DET_CLASSES), "splits": {}}
    for split, n in counts.items():
        for i, rel in enumerate(files[:n] if split == "train" else files[num_train:]):
            img, _ = _coco_sample(_rng(seed, "imagenet", split, i), i, side_range, max_objects=1,
                                  size_range=CLS_OBJ_SIZE_RANGE)
            _save_jpeg(img, root / rel)
        summary["splits"][split] = {"images": n, "img_dir": f"{split}/"}
    return _finish(root, "imagenet", spec, files, summary)


def make_demo_data(root: str | os.PathLike = "data/demo", seed: int = 0, *, coco_train: int = 120,
                   coco_val: int = 30, ade_train: int = 80, ade_val: int = 20,
                   cls_train: int = 800, cls_val: int = 200,
                   side_range: tuple[int, int] = DEFAULT_SIDE_RANGE,
                   max_objects: int = 5) -> dict[str, Any]:
    """All three halves under ``root``; returns ``{"coco": .., "ade": .., "imagenet": ..}``
    summaries."""
    return {"coco": make_coco_demo(root, coco_train, coco_val, side_range, max_objects, seed),
            "ade": make_ade_demo(root, ade_train, ade_val, side_range, seed),
            "imagenet": make_imagenet_demo(root, cls_train, cls_val, seed=seed)}


# ----------------------------------------------------------------------------- manifest

def _write_json(path: Path, obj: Any) -> None:
    # Fixed formatting so identical content gives identical bytes.
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return {}


def _write_manifest_section(root: Path, key: str, section: dict[str, Any]) -> None:
    manifest = _read_manifest(root)
    manifest[key] = section
    tmp = root / f".{MANIFEST}.tmp"  # atomic replace: a crash never leaves half a manifest
    tmp.write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")
    os.replace(tmp, root / MANIFEST)


def _begin(root: Path, key: str, spec: dict[str, Any], files: list[str],
           dirs: list[Path]) -> dict[str, Any] | None:
    """Return the recorded summary if the data is already there; otherwise clear what the last
    run of this half wrote and mark the half as in progress."""
    old = _read_manifest(root).get(key)
    if (old and old.get("complete") and old.get("spec") == spec
            and all((root / f).is_file() for f in old.get("files", []))):
        return {**old["summary"], "data_root": str(root / _DATA_ROOT[key]), "skipped": True}
    for f in (old or {}).get("files", []):
        (root / f).unlink(missing_ok=True)
    # Only ever delete files the manifest says we wrote: ROOT may be mistyped as a real dataset.
    foreign = [p for d in dirs if d.is_dir() for p in d.iterdir()]
    if foreign:
        raise FileExistsError(
            f"{foreign[0].parent} holds files this generator did not write (e.g. "
            f"{foreign[0].name}); use an empty or demo-only output directory")
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    # Recorded before writing: an interrupted run is cleaned up by the next one.
    _write_manifest_section(root, key, {"spec": spec, "files": files, "complete": False})
    return None


def _finish(root: Path, key: str, spec: dict[str, Any], files: list[str],
            summary: dict[str, Any]) -> dict[str, Any]:
    # The summary holds no absolute path, so the manifest is the same bytes wherever ROOT is.
    _write_manifest_section(root, key, {"spec": spec, "files": files, "complete": True,
                                        "summary": summary})
    return {**summary, "data_root": str(root / _DATA_ROOT[key]), "skipped": False}
