"""Bad samples fail with the file and the problem named, or are skipped (``skip_bad_samples``),
instead of crashing later on a shape error or being dropped without a word. The one place for
image files, label maps and the per-sample checks of every dataset.

Checked when an MM dataset is built, before any model:

- COCO-style annotation files, in one pass as they are read (``coco_checks``);
- boxes of negative size, and boxes reaching outside their image, which mmdet would otherwise
  drop silently (or keep, misplaced: the ``[x1, y1, x2, y2]``-instead-of-``[x, y, width,
  height]`` mistake). Boxes narrower or lower than 1 px (zero area included; COCO train2017 is
  reported to hold two of height 0) are not errors: mmdet leaves those annotations out, and
  they are listed in a warning while their images keep their other boxes;
- that every listed image and label map exists (one directory listing per folder, not one
  ``stat`` per file): none at all is a wrong folder or suffix, named as such.

Checked per sample as it is loaded (the file headers only, plus the label values mmseg loads):
a missing, empty, unreadable or unsupported image or label map; an image over the
decompression-bomb limit (``max_image_pixels``); a label map whose size is not its image's (EXIF
rotation named when that is the cause); a colour label map where class indices are expected; a
16-bit label map with values mmseg would wrap; label values outside the class range other than
the ignore index; a non-RGB image in a pipeline that loads it ``unchanged``; and any error the
pipeline raises (reported with the sample's files).

Handled, the same in training and inference: EXIF orientation (images load upright: OpenCV and
mmcv's pillow backend apply it, and so does ``load_rgb``), grayscale, palette and CMYK images
(converted to RGB), 16-bit images (their high byte, as OpenCV reads them).

Skipping applies to training data only: an evaluation set that silently lost images would give
a metric on another set.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "BadSampleError", "CheckedDataset", "ImageHeader",
           "LabelValueCheck", "box_problems", "build_checked_dataset", "check_sample_files",
           "fetch_skipping", "load_rgb", "read_header"]

log = logging.getLogger(__name__)

# Pixels a box may reach past the border (rounding in annotation tools) before it is an error.
BOX_TOLERANCE = 1.0
# With skip_bad_samples, this many bad samples in a row means the data is unusable, not noisy.
MAX_SKIPS_IN_A_ROW = 20
# The decompression-bomb guard: PIL's own refusal threshold (2 x its 89,478,485-pixel warning),
# about 13,400 x 13,400. Configurable: max_image_pixels (MM config key) / --data.max_image_pixels.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
_EXIF_ORIENTATION = 0x0112
_NUMBERS = {int, float}
_LABEL_MODES = ("L", "P", "1", "I;16", "I;16B", "I;16L", "I")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
# Lines of a report: enough to see the pattern, short enough to read.
_REPORT_LIMIT = 5


class BadSampleError(ValueError):
    """A sample that cannot be used; the message names its file(s) and the problem."""


# ---- images ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: ``size`` (width, height) as stored, ``upright`` after
    its EXIF orientation (what OpenCV and ``load_rgb`` give), PIL ``mode`` and ``format``."""

    path: str
    size: tuple[int, int]
    upright: tuple[int, int]
    mode: str
    format: str | None
    orientation: int


@contextlib.contextmanager
def _pil_guard_off() -> Iterator[None]:
    # The pixel limit is ours (max_image_pixels); PIL's global one would refuse or warn first.
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_pixels(path: str, size: tuple[int, int], max_pixels: int | None, what: str) -> None:
    w, h = size
    if max_pixels and w * h > max_pixels:
        raise BadSampleError(
            f"{what} {path} is {w} x {h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(a guard against decompression bombs: small files that decode to gigabytes). If "
            "the image is genuine, raise the limit: --cfg-options max_image_pixels=N (MM "
            "configs) or --data.max_image_pixels N (classification); 0 turns it off")


def read_header(path: str, what: str = "image",
                max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> ImageHeader:
    """The header of an image file, without decoding its pixels; ``BadSampleError`` naming the
    file for a missing, empty, unreadable or oversized one."""
    try:
        if os.path.getsize(path) == 0:
            raise BadSampleError(f"{what} {path} is empty (0 bytes): an interrupted copy or "
                                 "download? Replace or remove it")
        with _pil_guard_off(), Image.open(path) as img:
            size, mode, fmt = img.size, img.mode, img.format
            _check_pixels(path, size, max_pixels, what)
            # PIL decodes a whole PNG to look for EXIF after its pixels (a bomb would go off,
            # and every label map would be decoded twice): only EXIF found in the header counts.
            exif = img.getexif() if fmt != "PNG" or "exif" in img.info else {}
            orientation = exif.get(_EXIF_ORIENTATION, 1)
    except FileNotFoundError:
        raise BadSampleError(f"{what} file not found: {path}") from None
    except Image.UnidentifiedImageError:
        raise BadSampleError(
            f"cannot read {what} {path} (no image format recognised): the file is corrupt, "
            "not an image, or in a format the loaders do not read (HEIC, AVIF, SVG, ...); "
            "replace it, convert it to JPEG or PNG, or remove it") from None
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, BadSampleError):
            raise
        raise BadSampleError(f"cannot read {what} {path} ({e}): the file is corrupt or not "
                             "an image; replace or remove it") from None
    upright = size[::-1] if orientation in (5, 6, 7, 8) else size
    return ImageHeader(path, size, upright, mode, fmt, orientation)


def load_rgb(path: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """An image file as upright 8-bit RGB, read as OpenCV (the MM pipelines' decoder) reads it:
    EXIF orientation applied, grayscale / palette / CMYK converted, 16-bit reduced to its high
    byte (PIL alone would clip 16-bit values at 255). Errors name the file."""
    header = read_header(path, max_pixels=max_pixels)
    try:
        with _pil_guard_off(), Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in _SIXTEEN_BIT:
                img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
            elif img.mode == "F":
                raise BadSampleError(f"image {path} holds floating-point pixels (mode F), "
                                     "which the loaders do not read as colours; convert it to "
                                     "8-bit JPEG or PNG")
            return img.convert("RGB")
    except FileNotFoundError:
        raise BadSampleError(f"image file not found: {path} (listed when the dataset was built: "
                             "moved or deleted since?)") from None
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, BadSampleError):
            raise
        raise BadSampleError(f"cannot read image {path} ({header.format or 'unknown'} file: "
                             f"{e}): the file is corrupt or not an image; replace or remove it"
                             ) from None


# ---- label maps and samples -----------------------------------------------------------------

def _local(path: Any) -> bool:
    return isinstance(path, str | os.PathLike) and "://" not in str(path)


def check_sample_files(info: dict, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                       color_type: str = "color") -> None:
    """The files of an MM data info (``img_path``, ``seg_map_path``) exist and read as images
    within ``max_pixels``; the image suits a pipeline loading it as ``color_type``; the label map
    holds one class index per pixel and has its image's upright size."""
    img, seg = info.get("img_path"), info.get("seg_map_path")
    header = read_header(img, max_pixels=max_pixels) if _local(img) else None
    if header is not None and color_type == "unchanged" and header.mode != "RGB":
        raise BadSampleError(
            f"image {img} is {header.mode} (not RGB), and the pipeline loads images unchanged "
            "(LoadImageFromFile color_type='unchanged'), so it would reach the model without "
            "three channels; set color_type='color' (converts any image to RGB) or convert it")
    if not (seg and _local(seg)):
        return
    label = read_header(seg, "label map", max_pixels=max_pixels)
    if label.mode not in _LABEL_MODES:
        raise BadSampleError(
            f"label map {seg} is a colour image ({label.mode}), but label maps hold one class "
            "index per pixel (a single-channel or palette PNG, mode L or P). Convert the "
            "colours to class indices (e.g. with the dataset's palette) and save it as "
            "single-channel PNG")
    if label.mode in _SIXTEEN_BIT:
        with Image.open(seg) as im:
            top = int(np.asarray(im).max())
        if top > 255:
            raise BadSampleError(
                f"label map {seg} is 16-bit and holds values up to {top}; mmseg reads label "
                "maps as 8-bit, so values over 255 would wrap into other classes. Use fewer than "
                "255 classes or remap the values")
    if header is None or label.size == header.upright:
        return
    (w, h), (lw, lh) = header.upright, label.size
    if label.size == header.size:
        raise BadSampleError(
            f"label map {seg} is {lw} x {lh}, but its image {img} has EXIF orientation "
            f"{header.orientation} and loads rotated, {w} x {h} (the decoders apply EXIF "
            "rotation): rotate the label map to match, or write the image upright without the "
            "orientation tag")
    raise BadSampleError(
        f"label map {seg} is {lw} x {lh} but its image {img} is {w} x {h}: a label map must "
        "have its image's size (wrong file, or resized separately?)")


class LabelValueCheck:
    """A pipeline step put right after mmseg's ``LoadAnnotations``: the loaded label map's values
    are class indices (``0 .. num_classes - 1``) or ``ignore_index``. mmseg would count other
    values as ignored in the metric and fail (or train on garbage) in the loss."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def __call__(self, results: dict) -> dict:
        seg = results.get("gt_seg_map")
        if seg is None:
            return results
        seg = np.ascontiguousarray(seg, dtype=np.uint8)
        if seg.ndim == 2:  # OpenCV's histogram: 0.2 ms for 512 x 683, 3x faster than bincount
            import cv2
            counts = cv2.calcHist([seg], [0], None, [256], [0, 256]).ravel()
        else:
            counts = np.bincount(seg.ravel(), minlength=256)
        counts[: self.num_classes] = 0
        if 0 <= self.ignore_index < counts.size:
            counts[self.ignore_index] = 0
        bad = np.flatnonzero(counts)
        if bad.size:
            raise BadSampleError(self._message(results, bad.tolist()))
        return results

    def _message(self, results: dict, bad: list[int]) -> str:
        n, reduce = self.num_classes, bool(results.get("reduce_zero_label"))
        mapped = results.get("label_map") is not None
        stored = bad if mapped or not reduce else [v + 1 for v in bad]
        shown = ", ".join(map(str, stored[:10])) + (", ..." if len(stored) > 10 else "")
        if reduce:
            rule = (f"with reduce_zero_label=True the stored values must be 0 (ignored), 1..{n} "
                    f"(the classes) or 255 (ignored)")
        else:
            rule = (f"with reduce_zero_label=False the stored values must be 0..{n - 1} (the "
                    f"classes) or {self.ignore_index} (ignored)")
        return (f"label map {results.get('seg_map_path')} holds values {shown}"
                f"{' (after the label_map)' if mapped else ''} outside the {n} classes of the "
                f"config: {rule}. Fix the label map, or the config: its classes (num_classes), "
                "or reduce_zero_label (True when 0 means 'other', as in ADE20K)")


def box_problems(img_info: dict, anns: list[dict]) -> tuple[list[str], list[str]]:
    """The boxes of one image of a COCO-style file: (errors, notes). Errors: not four finite
    numbers, negative width / height, reaching outside the image by more than ``BOX_TOLERANCE``
    px. Notes: boxes under 1 px wide or high or of area 0, which mmdet leaves out. ``ignore``
    annotations are skipped, as mmdet skips them."""
    width, height = img_info.get("width"), img_info.get("height")
    # Border limits once per image; the loop below runs for every box of the file (860k in
    # COCO train2017), so its common case is a few comparisons.
    right = width + BOX_TOLERANCE if width else math.inf
    bottom = height + BOX_TOLERANCE if height else math.inf
    errors, notes = [], []
    for ann in anns:
        if ann.get("ignore", False):
            continue
        box = ann.get("bbox")
        if (type(box) is list and len(box) == 4 and type(box[0]) in _NUMBERS
                and type(box[1]) in _NUMBERS and type(box[2]) in _NUMBERS
                and type(box[3]) in _NUMBERS):
            x, y, w, h = box
        else:
            try:
                x, y, w, h = (float(v) for v in box)
            except (TypeError, ValueError):
                errors.append(f"annotation {ann.get('id', '?')}: bbox {box!r} is not "
                              "[x, y, width, height]")
                continue
        total = x + y + w + h
        if (w >= 1 and h >= 1 and x >= -BOX_TOLERANCE and y >= -BOX_TOLERANCE
                and x + w <= right and y + h <= bottom and total - total == 0
                and ann.get("area", 1) > 0):
            continue  # a sound box
        name = f"annotation {ann.get('id', '?')}"
        if total - total != 0:  # inf or nan somewhere
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


# ---- building a dataset ----------------------------------------------------------------------

def _report(bad: dict[str, list[str]], source: str, what: str = "bad boxes",
            limit: int = _REPORT_LIMIT) -> str:
    lines = [f"  {path}: {'; '.join(problems)}" for path, problems in list(bad.items())[:limit]]
    more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{source}: {len(bad)} image(s) with {what}:\n" + "\n".join(lines) + more


def _transforms(dataset) -> list:
    return list(getattr(getattr(dataset, "pipeline", None), "transforms", None) or [])


def _loads_annotations(dataset) -> bool:
    return any(type(t).__name__ == "LoadAnnotations" for t in _transforms(dataset))


def _color_type(dataset) -> str:
    for t in _transforms(dataset):
        if type(t).__name__ == "LoadImageFromFile":
            return getattr(t, "color_type", "color")
    return "color"


def _is_seg_dataset(dataset) -> bool:
    return any(c.__name__ == "BaseSegDataset" for c in type(dataset).__mro__)


def _missing_files(infos: list[dict], key: str) -> list[int]:
    """Indices of ``infos`` whose local ``key`` file is absent: one listing per folder."""
    listed: dict[str, set[str] | None] = {}
    missing = []
    for i, info in enumerate(infos):
        path = info.get(key)
        if not (path and _local(path)):
            continue
        folder, name = os.path.split(os.fspath(path))
        if folder not in listed:
            try:
                listed[folder] = set(os.listdir(folder or "."))
            except (FileNotFoundError, NotADirectoryError):
                listed[folder] = None
        if listed[folder] is None or name not in listed[folder]:
            missing.append(i)
    return missing


def _suffixes(folder: str | None) -> str:
    """'12 .png, 3 .txt' for the files of ``folder`` (what an empty dataset did find there)."""
    if not folder or not os.path.isdir(folder):
        return "the folder does not exist" if folder else ""
    found: dict[str, int] = {}
    for _, _, files in os.walk(folder):
        for f in files:
            ext = os.path.splitext(f)[1] or "(none)"
            found[ext] = found.get(ext, 0) + 1
    if not found:
        return "the folder is empty"
    return "it holds " + ", ".join(f"{n} {ext}" for ext, n in sorted(found.items()))


def _check_files_listed(dataset, infos: list[dict], source: str, skip: bool,
                        training: bool) -> list[dict]:
    """``infos`` after checking that their images and label maps exist; when none does the
    folder or suffix is wrong (always an error); some missing are bad samples."""
    bad: dict[str, list[str]] = {}
    for key, what in (("img_path", "image"), ("seg_map_path", "label map")):
        missing = _missing_files(infos, key)
        if not missing:
            continue
        if len(missing) == len(infos):
            example = infos[0]
            hint = ""
            if key == "seg_map_path":
                hint = (f" (its image {example.get('img_path')} expects it there: check "
                        "data_prefix.seg_map_path and seg_map_suffix "
                        f"{getattr(dataset, 'seg_map_suffix', '?')!r})")
            raise FileNotFoundError(
                f"{source}: none of the {len(infos)} {what} files is where the config puts "
                f"them, e.g. {example[key]}{hint}; "
                f"{_suffixes(os.path.dirname(os.fspath(example[key])))}. Check data_root and "
                "data_prefix")
        for i in missing:
            bad.setdefault(infos[i].get("img_path") or infos[i][key], []).append(
                f"{what} file not found: {infos[i][key]}")
    if not bad:
        return infos
    report = _report(bad, source, "missing files")
    if not training:
        raise BadSampleError(f"{report}\nRestore the files (evaluation data is never skipped)")
    if not skip:
        raise BadSampleError(f"{report}\nRestore the files, or set skip_bad_samples=True to "
                             "train without these images")
    log.warning("%s\nskip_bad_samples: these images are left out", report)
    return [info for info in infos if (info.get("img_path") or "") not in bad]


def _full_init_checked(dataset, source: str, skip: bool, training: bool
                       ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``dataset.full_init()`` with its reading watched:

    - a COCO-style file (``COCOAPI``) is read and checked by ``coco_checks`` (``skip`` leaves
      out the images with bad annotations);
    - ``parse_data_info``: the box errors and notes (``box_problems``) of every image whose raw
      COCO-style annotations it is given, by image path (returned);
    - ``filter_data``: every image and label map listed exists.
    """
    from .coco_checks import checked_coco_api

    bad: dict[str, list[str]] = {}
    tiny: dict[str, list[str]] = {}
    parse, filter_data = dataset.parse_data_info, dataset.filter_data
    hooks = ["parse_data_info", "filter_data"]

    def checked_parse(raw: dict):
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

    def checked_filter():
        infos = filter_data()
        if infos and isinstance(infos[0], dict):
            infos = _check_files_listed(dataset, infos, source, skip, training)
        return infos

    dataset.parse_data_info, dataset.filter_data = checked_parse, checked_filter
    ann_file = getattr(dataset, "ann_file", "")
    base = getattr(dataset, "COCOAPI", None)
    if base is not None and _local(ann_file) and str(ann_file).endswith(".json"):
        classes = (dataset.metainfo or {}).get("classes")
        need = _loads_annotations(dataset) or not getattr(dataset, "test_mode", False)
        dataset.COCOAPI = lambda path: checked_coco_api(
            base, path, classes, need, skip, training)
        hooks.append("COCOAPI")
    try:
        dataset.full_init()
    finally:
        for name in hooks:  # back to the class's own (and picklable for workers)
            del dataset.__dict__[name]
    return bad, tiny


def build_checked_dataset(cfg: dict, skip_bad_samples: bool = False, training: bool = True,
                          max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                          ignore_index: int = 255):
    """``DATASETS.build(cfg)`` (current registry scope) wrapped in a ``CheckedDataset``; file
    and box problems raise here, before any training, or (skipping) drop those images with a
    warning. ``training=False``: evaluation data, which is never skipped (the error says so).
    Segmentation datasets get ``LabelValueCheck`` after their ``LoadAnnotations`` (labels in
    the class range or ``ignore_index``)."""
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
        cfg["lazy_init"] = True  # build without loading, then load with the files watched
    dataset = DATASETS.build(cfg)
    if watch:
        source = str(getattr(dataset, "ann_file", "") or cfg["type"])
        try:
            bad, tiny = _full_init_checked(dataset, source, skip_bad_samples, training)
        except ValueError as e:  # mmengine serialises the list with np.concatenate
            if "need at least one array" not in str(e):
                raise
            prefix = getattr(dataset, "data_prefix", None) or {}
            img_dir = prefix.get("img_path") or prefix.get("img")
            found = _suffixes(img_dir)
            suffix = getattr(dataset, "img_suffix", None)
            raise ValueError(
                f"the dataset is empty: no images listed by ann_file="
                f"{getattr(dataset, 'ann_file', None)!r} or found under data_prefix="
                f"{getattr(dataset, 'data_prefix', None)!r}"
                + (f" with img_suffix={suffix!r}" if suffix else "")
                + (f" ({found})" if found else "") + "; check the paths") from None
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
    if _is_seg_dataset(dataset):
        transforms = dataset.pipeline.transforms
        at = [i for i, t in enumerate(transforms) if type(t).__name__ == "LoadAnnotations"]
        classes = (dataset.metainfo or {}).get("classes") or ()
        if at and classes:  # without class names there is no range to check against
            transforms.insert(at[0] + 1, LabelValueCheck(len(classes), ignore_index))
    return CheckedDataset(dataset, skip_bad_samples, max_image_pixels, _color_type(dataset))


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


def _undecodable(path: str, error: Exception) -> str | None:
    """A clearer message for an image the pipeline's decoder could not read, if that is what
    ``error`` is (mmcv asserts ``failed to load image`` when OpenCV returns nothing)."""
    if "failed to load image" not in str(error) or not _local(path):
        return None
    with contextlib.suppress(BadSampleError):
        fmt = read_header(path, max_pixels=None).format
        return (f"image {path} is a {fmt} file, which the pipeline's decoder (OpenCV, "
                "LoadImageFromFile) cannot read; convert it to JPEG or PNG")
    return None


class CheckedDataset(Dataset):
    """An MM dataset whose samples are checked as they load (see the module docstring); other
    attributes (``metainfo``, ``get_data_info``...) are the wrapped dataset's."""

    def __init__(self, dataset, skip_bad_samples: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 color_type: str = "color"):
        self.dataset = dataset
        self.skip_bad_samples = skip_bad_samples
        self.max_image_pixels = max_image_pixels
        self.color_type = color_type

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
        check_sample_files(info, self.max_image_pixels, self.color_type)
        try:
            return self.dataset[index]
        except BadSampleError:
            raise
        except Exception as e:  # decoders and transforms rarely name the file they choked on
            clearer = _undecodable(info.get("img_path"), e)
            if clearer:
                raise BadSampleError(clearer) from e
            files = ", ".join(str(info[k]) for k in ("img_path", "seg_map_path") if info.get(k))
            raise BadSampleError(f"sample {index} ({files}) failed in the data pipeline: "
                                 f"{type(e).__name__}: {e}") from e
