#!/usr/bin/env python
"""Generate the demo dataset (COCO-format shapes, ADE20K-format scenes, ImageNet-style folder of
shapes), deterministically.

    python tools/make_demo_data.py                      # data/demo, seed 0, default sizes
    python tools/make_demo_data.py --out /tmp/demo --seed 1 --coco-train 20 --ade-train 10

Re-running with the same settings does nothing (ROOT/manifest.json records them).
"""

from __future__ import annotations

import argparse
import time

from lightning_modules.demo_data import DEFAULT_SIDE_RANGE, make_demo_data


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="data/demo", help="output root (default: data/demo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--coco-train", type=int, default=120, help="COCO train images")
    ap.add_argument("--coco-val", type=int, default=30, help="COCO val images")
    ap.add_argument("--ade-train", type=int, default=80, help="ADE train images")
    ap.add_argument("--ade-val", type=int, default=20, help="ADE val images")
    ap.add_argument("--cls-train", type=int, default=800, help="classification train images")
    ap.add_argument("--cls-val", type=int, default=200, help="classification val images")
    ap.add_argument("--side-range", nargs=2, type=int, metavar=("MIN", "MAX"),
                    default=list(DEFAULT_SIDE_RANGE), help="image height/width range in px")
    ap.add_argument("--max-objects", type=int, default=5, help="COCO objects per image, at most")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    written = make_demo_data(args.out, args.seed, coco_train=args.coco_train,
                             coco_val=args.coco_val, ade_train=args.ade_train,
                             ade_val=args.ade_val, cls_train=args.cls_train,
                             cls_val=args.cls_val, side_range=tuple(args.side_range),
                             max_objects=args.max_objects)
    for name, res in written.items():
        state = "up to date, skipped" if res["skipped"] else "written"
        print(f"{name}: {res['data_root']} ({state}); classes {', '.join(res['classes'])}")
        for split, s in res["splits"].items():
            extra = (f", {s['instances']} instances -> {s['ann_file']}" if "instances" in s
                     else f", labels in {s['seg_map_dir']}" if "seg_map_dir" in s
                     else ", one folder per class")
            print(f"  {split}: {s['images']} images in {s['img_dir']}{extra}")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
