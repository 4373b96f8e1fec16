#!/usr/bin/env python
"""Draw a trained model's predictions on images: infer.py CONFIG CKPT IMAGE... --out DIR"""

import argparse

from lightning_modules.inference import infer

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config")
    ap.add_argument("checkpoint")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--out", required=True, help="folder for the pictures")
    ap.add_argument("--score-thr", type=float, default=0.3)
    args = ap.parse_args()
    for path in infer(args.config, args.checkpoint, args.images, args.out, args.score_thr):
        print(path)
