"""COCO-style annotation files checked in one pass as they are read, before any model exists.

pycocotools and mmdet read these files trusting their shape: a file cut short ends in a bare
``JSONDecodeError``, a missing key in a ``KeyError`` deep in mmdet, and many mistakes pass
silently (pycocotools keeps the last of two images with one id; mmdet drops annotations of
unknown categories, leaves out polygons it cannot use and numbers the labels after the classes
it found, so a config naming a class the file lacks shifts every later label). Here the file is
read once (the read pycocotools would do), checked, and handed to pycocotools already parsed:

- file problems (always errors): not JSON, or cut short (the position and file size named);
  not an object; ``images`` / ``categories`` / (when the pipeline loads annotations)
  ``annotations`` missing or not lists; records without the keys mmdet reads; duplicate image,
  category or annotation ids; config classes the file does not have (both lists named);
- annotation problems, reported per image (errors, or with ``skip_bad_samples`` on training
  data the image is left out): ``bbox`` not four numbers, a category id absent from
  ``categories``, a polygon with an odd number of coordinates, an RLE whose size is not its
  image's or whose counts do not add up to it, a segmentation of neither form;
- annotations whose ``image_id`` has no image (errors; skipped with a warning when skipping:
  mmdet never reads them);
- notes (warnings): polygons of fewer than 3 points, which mmdet drops (an annotation left
  without polygons becomes an ignored region).

Box geometry (negative sizes, boxes outside the image) is checked per image as mmdet parses
the file (``data_checks.box_problems``).
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

__all__ = ["AnnotationFileError", "CocoReport", "check_annotation_file", "check_coco",
           "checked_coco_api", "read_json"]

log = logging.getLogger(__name__)

# Lines of a report: enough to see the pattern, short enough to read.
REPORT_LIMIT = 5


class AnnotationFileError(ValueError):
    """An annotation file that cannot be used as it is; the message names it and the fix."""


def read_json(path: str | os.PathLike) -> Any:
    """The parsed JSON of ``path``; errors name the file, the position and the likely cause."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        raise AnnotationFileError(f"annotation file {path} is empty (0 bytes): an interrupted "
                                  "copy or download? Copy it again")
    with open(path, "rb") as f:  # bytes: json detects the encoding, positions are bytes
        raw = f.read()
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise AnnotationFileError(f"annotation file {path} is not text ({e.reason} at byte "
                                  f"{e.start}): not a JSON file (an archive or an image?); "
                                  "give the .json annotation file") from None
    except json.JSONDecodeError as e:
        # A file that stops mid-way (the usual result of a failed copy): the error is at its
        # end, or it does not end as a JSON object or list does.
        cut = e.pos >= size - 2 or "Unterminated" in e.msg or raw.rstrip()[-1:] not in (
            b"}", b"]")
        cause = (f"the file ends there, cut short ({size} bytes): an interrupted copy or "
                 "download? Copy it again" if cut else
                 "the file is not valid JSON there; fix it or export it again")
        raise AnnotationFileError(f"annotation file {path} is not valid JSON: {e.msg} at line "
                                  f"{e.lineno}, column {e.colno} (byte {e.pos}); {cause}"
                                  ) from None


_NUMBER_TYPES = {int, float}


def _is_number(v: Any) -> bool:
    return type(v) in _NUMBER_TYPES or (isinstance(v, numbers.Real) and not isinstance(v, bool))


def _is_box(box: Any) -> bool:
    return isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)


def _segmentation_problem(seg: Any, img: dict) -> tuple[str | None, str | None]:
    """(error, note) for one annotation's ``segmentation`` (empty / absent: none)."""
    if type(seg) is list:
        odd = [i for i, p in enumerate(seg) if not isinstance(p, list) or len(p) % 2]
        if odd:
            i = odd[0]
            what = (f"{len(seg[i])} coordinates (odd: x, y pairs expected)"
                    if isinstance(seg[i], list) else f"a {type(seg[i]).__name__}, not a list")
            return f"polygon {i} has {what}", None
        short = [i for i, p in enumerate(seg) if len(p) < 6]
        if short:
            return None, (f"polygon(s) {short} of fewer than 3 points (mmdet drops them"
                          + ("; none is left, so the object becomes an ignored region)"
                             if len(short) == len(seg) else ")"))
        return None, None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if counts is None or not isinstance(size, list) or len(size) != 2:
            return "RLE segmentation without 'counts' and a [height, width] 'size'", None
        h, w = img.get("height"), img.get("width")
        if size != [h, w]:
            return (f"RLE of size {size} on a {h} x {w} image (size is [height, width] of "
                    "its image)"), None
        if isinstance(counts, list):
            if not all(_is_number(c) for c in counts):
                return "RLE counts are not all numbers", None
            if _is_number(h) and _is_number(w) and sum(counts) != h * w:
                return (f"RLE counts add up to {sum(counts)} pixels, its {h} x {w} image has "
                        f"{h * w}"), None
        elif not isinstance(counts, str):
            return f"RLE counts is a {type(counts).__name__}, not a list or a string", None
        return None, None
    return (f"segmentation is a {type(seg).__name__}: expected polygons (a list of lists) "
            "or an RLE dict"), None


class CocoReport:
    """What ``check_coco`` found: ``fatal`` file problems, ``bad`` annotation problems and
    ``notes`` by image id, ``orphans`` (annotations whose image is not in the file)."""

    def __init__(self) -> None:
        self.fatal: list[str] = []
        self.bad: dict[Any, list[str]] = {}
        self.notes: dict[Any, list[str]] = {}
        self.orphans: list[str] = []


def _listing(kind: str, items: Sequence[str]) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > REPORT_LIMIT else ""
    return f"{kind}: " + "; ".join(items[:REPORT_LIMIT]) + more


def _duplicates(ids: list, what: str) -> str | None:
    try:
        if len(set(ids)) == len(ids):
            return None
    except TypeError:  # an unhashable id (a list, an object)
        bad = next(i for i in ids if not isinstance(i, Hashable))
        return f"{what} id {bad!r} is not a number or a string"
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if not dup:
        return None
    shown = ", ".join(repr(i) for i in dup[:REPORT_LIMIT])
    return (f"{len(dup)} {what} id(s) used more than once ({shown}{', ...' if len(dup) > 5 else ''}"
            "): ids must be unique (pycocotools keeps only the last record of an id)")


def check_coco(data: Any, classes: Sequence[str] | None = None,
               need_annotations: bool = True) -> CocoReport:
    """Check a parsed COCO-style file in one pass over its records (module docstring).
    ``classes``: the config's class names, each of which must be a category of the file;
    ``need_annotations``: the pipeline loads annotations (a test-dev image list has none)."""
    report = CocoReport()
    if not isinstance(data, dict):
        report.fatal.append(f"the file holds a JSON {type(data).__name__}, not an object with "
                            "'images', 'annotations' and 'categories' (a COCO instances file)")
        return report
    required = ("images", "categories") + (("annotations",) if need_annotations else ())
    missing = [k for k in required if k not in data]
    if missing:
        report.fatal.append(
            f"no {' / '.join(repr(k) for k in missing)} key (its keys: {sorted(data)}): not a "
            "COCO instances file (a captions, keypoints or image-list file?)")
    wrong = [f"'{k}' is a {type(data[k]).__name__}" for k in required
             if k in data and not isinstance(data[k], list)]
    if wrong:
        report.fatal.append(f"{', '.join(wrong)}; expected lists of records")
    if report.fatal:
        return report
    images, categories = data["images"], data["categories"]
    annotations = data.get("annotations", [])

    def records(items: list, what: str, keys: tuple[str, ...]) -> list[str]:
        problems = []
        need = set(keys)
        for i, r in enumerate(items):
            if type(r) is dict and need <= r.keys():
                continue
            if not isinstance(r, dict):
                problems.append(f"{what}[{i}] is a {type(r).__name__}, not an object")
            elif not need <= r.keys():
                lacking = [k for k in keys if k not in r]
                problems.append(f"{what}[{i}] (id {r.get('id', '?')!r}) has no {lacking}")
        return problems

    for items, what, keys in ((images, "images", ("id", "file_name", "width", "height")),
                              (categories, "categories", ("id", "name")),
                              (annotations, "annotations",
                               ("id", "image_id", "category_id", "bbox", "area"))):
        problems = records(items, what, keys)
        if problems:
            report.fatal.append(_listing(f"{len(problems)} {what} record(s) lack keys mmdet "
                                         "reads", problems))
    if report.fatal:
        return report
    for ids, what in (([r["id"] for r in images], "image"),
                      ([r["id"] for r in categories], "category"),
                      ([r["id"] for r in annotations], "annotation")):
        problem = _duplicates(ids, what)
        if problem:
            report.fatal.append(problem)
    names = [c["name"] for c in categories]
    if classes is not None:
        absent = [c for c in classes if c not in names]
        if absent:
            report.fatal.append(
                f"the config's classes {absent} are not categories of this file, which has "
                f"{len(names)}: {names[:20]}{' ...' if len(names) > 20 else ''}. mmdet would "
                "drop them and number the labels after the classes it found. Set the dataset's "
                "metainfo=dict(classes=(...)) to classes of this file, or use the annotation "
                "file made for these classes")
    if report.fatal:
        return report

    by_id = {r["id"]: r for r in images}
    cat_ids = {c["id"] for c in categories}
    # One pass over the annotations (860k in COCO train2017), written for speed: the common
    # case (four numbers, a known category, polygons of >= 3 points) costs a few type checks.
    for ann in annotations:
        try:
            img = by_id.get(ann["image_id"])
            known_category = ann["category_id"] in cat_ids
        except TypeError:  # an unhashable id (a list, an object): not an id of the file
            img = by_id.get(ann["image_id"]) if isinstance(ann["image_id"], Hashable) else None
            known_category = False
        if img is None:
            report.orphans.append(f"annotation {ann['id']} (image_id {ann['image_id']!r})")
            continue
        box = ann["bbox"]
        good_box = type(box) is list and len(box) == 4 and (
            (type(box[0]) in _NUMBER_TYPES and type(box[1]) in _NUMBER_TYPES
             and type(box[2]) in _NUMBER_TYPES and type(box[3]) in _NUMBER_TYPES)
            or _is_box(box))
        seg = ann.get("segmentation")
        good_seg = not seg
        if type(seg) is list:
            good_seg = True
            for polygon in seg:
                if type(polygon) is not list or len(polygon) < 6 or len(polygon) % 2:
                    good_seg = False
                    break
        if good_box and known_category and good_seg:
            continue
        errors = []
        if not good_box:
            errors.append(f"bbox {box!r} is not four numbers [x, y, width, height]")
        if not known_category:
            errors.append(f"category_id {ann['category_id']!r} is not in 'categories'")
        if not good_seg:
            error, note = _segmentation_problem(seg, img)
            if error:
                errors.append(error)
            if note:
                report.notes.setdefault(img["id"], []).append(f"annotation {ann['id']}: {note}")
        if errors:
            report.bad.setdefault(img["id"], []).append(
                f"annotation {ann['id']}: {', '.join(errors)}")
    return report


def _settle(path: str, data: dict, report: CocoReport, skip: bool, training: bool) -> None:
    """Raise for what ``report`` found (``AnnotationFileError`` for file problems,
    ``BadSampleError`` for per-image ones), or, skipping training data, drop those images from
    ``data`` with a warning. Notes are logged."""
    from .data_checks import BadSampleError

    if report.fatal:
        raise AnnotationFileError(f"annotation file {path}: " + "\n".join(report.fatal))
    name = {r["id"]: r["file_name"] for r in data["images"]}

    def lines(problems: dict) -> list[str]:
        return [f"{name[i]} (image id {i!r}): {'; '.join(p)}" for i, p in problems.items()]

    if report.notes:
        log.warning("%s", f"{path}: {len(report.notes)} image(s) with polygons mmdet drops:\n  "
                    + "\n  ".join(lines(report.notes)[:REPORT_LIMIT]))
    problems = []
    if report.bad:
        problems.append(f"{len(report.bad)} image(s) with bad annotations:\n  "
                        + "\n  ".join(lines(report.bad)[:REPORT_LIMIT])
                        + (f"\n  ... and {len(report.bad) - REPORT_LIMIT} more"
                           if len(report.bad) > REPORT_LIMIT else ""))
    if report.orphans:
        problems.append(_listing(f"{len(report.orphans)} annotation(s) whose image_id is not "
                                 "an id in 'images' (images missing from the file, or ids "
                                 "off?)", report.orphans))
    if problems:
        text = f"{path}: " + "\n".join(problems)
        if not training:
            raise BadSampleError(f"{text}\nFix the annotation file (evaluation data is never "
                                 "skipped: a metric on fewer images would be a metric on "
                                 "another set)")
        if not skip:
            raise BadSampleError(f"{text}\nFix the annotation file, or set "
                                 "skip_bad_samples=True to train without these images")
        log.warning("%s\nskip_bad_samples: these images (and the annotations without an "
                    "image) are left out", text)
        drop = set(report.bad)
        data["images"] = [r for r in data["images"] if r["id"] not in drop]
        data["annotations"] = [a for a in data["annotations"]
                               if a["image_id"] in name and a["image_id"] not in drop]


def check_annotation_file(path: str | os.PathLike, classes: Sequence[str] | None = None,
                          need_annotations: bool = True) -> None:
    """Read and check a COCO-style file as evaluation data (e.g. a metric's own ``ann_file``):
    any problem raises, naming the file."""
    path = os.fspath(path)
    data = read_json(path)
    _settle(path, data, check_coco(data, classes, need_annotations), False, False)


def checked_coco_api(base: type, path: str, classes: Sequence[str] | None,
                     need_annotations: bool, skip: bool, training: bool):
    """An instance of the pycocotools-style class ``base`` (mmdet's ``COCO``) holding ``path``,
    read and checked by ``check_coco``: errors raise ``AnnotationFileError`` (file problems) or
    ``BadSampleError`` (per-image problems, unless skipping, which leaves those images out)."""
    data = read_json(path)
    _settle(path, data, check_coco(data, classes, need_annotations), skip, training)
    api = base(None)  # empty, then filled as its constructor would from the file
    api.dataset = data
    api.createIndex()
    for alias, attr in (("img_ann_map", "imgToAnns"), ("cat_img_map", "catToImgs")):
        if hasattr(api, alias):  # mmdet's wrapper keeps snake-case aliases of the index
            setattr(api, alias, getattr(api, attr))
    return api
