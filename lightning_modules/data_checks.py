"""Bad samples fail with the file and the problem named, or are skipped (``skip_bad_samples``),
instead of crashing later on a shape error or being dropped without a word.

Checked when a dataset is built (MM datasets whose annotation file goes through
``parse_data_info``, i.e. COCO-style detection files): boxes of negative size, and boxes reaching
outside their image, which mmdet would otherwise drop silently (or keep, misplaced: the
``[x1, y1, x2, y2]``-instead-of-``[x, y, w, h]`` mistake). Boxes narrower or lower than 1 px
(zero area included; COCO train2017 is reported to hold two of height 0) are not errors: mmdet
leaves those annotations out, and they are listed in a warning while their images keep their
other boxes.
Checked per sample as it is loaded: a missing or unreadable image, a missing or unreadable label
map, a label map whose size is not its image's, and any error the pipeline raises (reported with
the sample's files).

Skipping applies to training data only: an evaluation set that silently lost images would give
a metric on another set.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

__all__ = ["BadSampleError", "CheckedDataset", "box_problems", "build_checked_dataset",
           "fetch_skipping", "image_sizes"]

log = logging.getLogger(__name__)

# Pixels a box may reach past the border (rounding in annotation tools) before it is an error.
BOX_TOLERANCE = 1.0
# With skip_bad_samples, this many bad samples in a row means the data is unusable, not noisy.
MAX_SKIPS_IN_A_ROW = 20
_EXIF_ORIENTATION = 0x0112


class BadSampleError(ValueError):
    """A sample that cannot be used; the message names its file(s) and the problem."""


def image_sizes(path: str, what: str = "image") -> set[tuple[int, int]]:
    """The (width, height) of an image file from its header, and the transposed size too when
    its EXIF orientation rotates it (decoders that honour EXIF see that one)."""
    try:
        with Image.open(path) as img:
            size = img.size
            rotated = img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except FileNotFoundError:
        raise BadSampleError(f"{what} file not found: {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSampleError(f"{what} {path} cannot be read ({e}): the file is corrupt or not "
                             "an image; replace or remove it") from None
    return {size, size[::-1]} if rotated else {size}


def _local(path: Any) -> bool:
    return isinstance(path, str | os.PathLike) and "://" not in str(path)


def check_sample_files(info: dict) -> None:
    """The files of an MM data info (``img_path``, ``seg_map_path``) exist, read as images, and
    the label map has its image's size."""
    img, seg = info.get("img_path"), info.get("seg_map_path")
    sizes = image_sizes(img) if _local(img) else None
    if seg and _local(seg):
        (seg_size,) = image_sizes(seg, "label map")
        if sizes is not None and seg_size not in sizes:
            w, h = next(iter(sizes))
            raise BadSampleError(
                f"label map {seg} is {seg_size[0]} x {seg_size[1]} but its image {img} is "
                f"{w} x {h}: a label map must have its image's size (wrong file, or resized "
                "separately?)")


def box_problems(img_info: dict, anns: list[dict]) -> tuple[list[str], list[str]]:
    """The boxes of one image of a COCO-style file: (errors, notes). Errors: not four finite
    numbers, negative width / height, reaching outside the image by more than ``BOX_TOLERANCE``
    px. Notes: boxes under 1 px wide or high or of area 0, which mmdet leaves out. ``ignore``
    annotations are skipped, as mmdet skips them."""
    width, height = img_info.get("width"), img_info.get("height")
    errors, notes = [], []
    for ann in anns:
        if ann.get("ignore", False):
            continue
        name = f"annotation {ann.get('id', '?')}"
        box = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in box)
        except (TypeError, ValueError):
            errors.append(f"{name}: bbox {box!r} is not [x, y, width, height]")
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            errors.append(f"{name}: box {box} is not finite")
        elif w < 0 or h < 0:
            errors.append(f"{name}: box {box} has a negative size (width {w:g}, height {h:g}; "
                          "boxes are [x, y, width, height], [x1, y1, x2, y2] by mistake?)")
        elif width and height and (min(x, y) < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE
                                   or y + h > height + BOX_TOLERANCE):
            errors.append(f"{name}: box {box} reaches outside the {width} x {height} image "
                          "(boxes are [x, y, width, height] in pixels; [x1, y1, x2, y2] by "
                          "mistake?)")
        elif w < 1 or h < 1 or not ann.get("area", 1) > 0:  # mmdet's own rule
            notes.append(f"{name}: box {box} (area {ann.get('area', '?')}) is under 1 px or "
                         "has no area")
    return errors, notes


def _full_init_checking_boxes(dataset) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``dataset.full_init()`` with its ``parse_data_info`` watched: the box errors and notes
    (``box_problems``) of every image whose raw COCO-style annotations it is given, by image
    path."""
    bad: dict[str, list[str]] = {}
    tiny: dict[str, list[str]] = {}
    parse = dataset.parse_data_info

    def checked(raw: dict):
        info = parse(raw)
        if isinstance(raw, dict) and {"raw_img_info", "raw_ann_info"} <= raw.keys():
            errors, notes = box_problems(raw["raw_img_info"], raw["raw_ann_info"])
            key = info.get("img_path") if isinstance(info, dict) else None
            key = key or raw["raw_img_info"].get("file_name", "?")
            if errors:
                bad[key] = errors
            if notes:
                tiny[key] = notes
        return info

    dataset.parse_data_info = checked
    try:
        dataset.full_init()
    finally:
        del dataset.parse_data_info  # back to the class's method (and picklable for workers)
    return bad, tiny


def _report(bad: dict[str, list[str]], source: str, what: str = "bad boxes",
            limit: int = 5) -> str:
    lines = [f"  {path}: {'; '.join(problems)}" for path, problems in list(bad.items())[:limit]]
    more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{source}: {len(bad)} image(s) with {what}:\n" + "\n".join(lines) + more


def build_checked_dataset(cfg: dict, skip_bad_samples: bool = False, training: bool = True):
    """``DATASETS.build(cfg)`` (current registry scope) wrapped in a ``CheckedDataset``; box
    problems of a COCO-style annotation file raise here, before any training, or (skipping)
    drop those images with a warning. ``training=False``: evaluation data, which is never
    skipped (the error says so)."""
    from mmengine.dataset import BaseDataset
    from mmengine.registry import DATASETS

    cfg = copy.deepcopy(cfg)
    cls = cfg.get("type")
    if isinstance(cls, str):  # as build_from_cfg finds it (imports the scope's modules)
        with DATASETS.switch_scope_and_registry(cfg.get("_scope_")) as registry:
            cls = registry.get(cls)
    watch = (isinstance(cls, type) and issubclass(cls, BaseDataset)
             and not cfg.get("lazy_init", False))
    if watch:
        cfg["lazy_init"] = True  # build without loading, then load with the boxes watched
    dataset = DATASETS.build(cfg)
    if watch:
        try:
            bad, tiny = _full_init_checking_boxes(dataset)
        except ValueError as e:  # mmengine serialises the list with np.concatenate
            if "need at least one array" not in str(e):
                raise
            raise ValueError(
                f"the dataset is empty: no images listed by ann_file="
                f"{getattr(dataset, 'ann_file', None)!r} or found under data_prefix="
                f"{getattr(dataset, 'data_prefix', None)!r}; check the paths") from None
        source = str(getattr(dataset, "ann_file", "") or cfg["type"])
        if tiny:
            log.warning("%s\nmmdet leaves these annotations out; their images keep their other "
                        "boxes", _report(tiny, source, "boxes under 1 px or of area 0"))
        if bad:
            report = _report(bad, source)
            if not training:
                raise BadSampleError(f"{report}\nFix the annotation file (evaluation data is "
                                     "never skipped: a metric on fewer images would be a "
                                     "metric on another set)")
            if not skip_bad_samples:
                raise BadSampleError(f"{report}\nFix the annotation file, or set "
                                     "skip_bad_samples=True to train without these images")
            log.warning("%s\nskip_bad_samples: these images are left out", report)
            keep = [i for i in range(len(dataset))
                    if dataset.get_data_info(i).get("img_path") not in bad]
            dataset.get_subset_(keep)
    return CheckedDataset(dataset, skip_bad_samples)


def fetch_skipping(index: int, length: int, load: Callable[[int], Any], skip: bool) -> Any:
    """``load(index)``; on ``BadSampleError`` re-raise, or (``skip``) log it and load the next
    index instead, up to ``MAX_SKIPS_IN_A_ROW`` times."""
    problem = ""
    tries = min(length, MAX_SKIPS_IN_A_ROW + 1)
    for attempt in range(tries):
        try:
            return load((index + attempt) % length)
        except BadSampleError as e:
            if not skip:
                raise
            problem = str(e)
            log.warning("skip_bad_samples: skipping a bad sample: %s", problem)
    raise BadSampleError(f"{tries} bad samples in a row from index {index}: the data is not "
                         f"usable as it is (the last: {problem})")


class CheckedDataset(Dataset):
    """An MM dataset whose samples are checked as they load (see the module docstring); other
    attributes (``metainfo``, ``get_data_info``...) are the wrapped dataset's."""

    def __init__(self, dataset, skip_bad_samples: bool = False):
        self.dataset = dataset
        self.skip_bad_samples = skip_bad_samples

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return fetch_skipping(index, len(self), self._load, self.skip_bad_samples)

    def _load(self, index: int):
        info = self.dataset.get_data_info(index)
        check_sample_files(info)
        try:
            return self.dataset[index]
        except Exception as e:  # decoders and transforms rarely name the file they choked on
            files = ", ".join(str(info[k]) for k in ("img_path", "seg_map_path") if info.get(k))
            raise BadSampleError(f"sample {index} ({files}) failed in the data pipeline: "
                                 f"{type(e).__name__}: {e}") from e
