#!/usr/bin/env python
"""Parameters and FLOPs (multiply-adds, as the papers count) of a timm model.

    python tools/flops.py inline_swin_tiny [--size 224 224]
    python tools/flops.py --all            # every InLine / L2ViT variant at the papers' sizes
"""

from __future__ import annotations

import argparse

import timm

import backbones  # noqa: F401  (registers the models)
from benchmarks.flops import count_flops, count_params

# Variant -> (resolution of the paper's FLOPs, official params (M), official GMACs)
PAPER = {
    "inline_deit_tiny": (224, 6.48, 1.11), "inline_deit_small": (288, 16.73, 4.97),
    "inline_deit_base": (448, 23.80, 17.17),
    "inline_pvt_tiny": (224, 12.03, 1.98), "inline_pvt_small": (224, 21.56, 3.91),
    "inline_pvt_medium": (224, 37.62, 6.86), "inline_pvt_large": (224, 51.15, 10.13),
    "inline_swin_tiny": (224, 29.22, 4.46), "inline_swin_small": (224, 49.79, 8.72),
    "inline_swin_base": (224, 88.35, 15.40),
    "inline_cswin_tiny": (224, 20.60, 4.31), "inline_cswin_small": (224, 33.03, 6.77),
    "inline_cswin_base": (224, 73.41, 14.88),
    "l2vit_tiny": (224, 28.60, 4.69), "l2vit_small": (224, 50.20, 8.98),
    "l2vit_base": (224, 88.58, 15.81),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model", nargs="?", help="timm model name")
    ap.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                    help="input size (default: the model's pretrained_cfg input size)")
    ap.add_argument("--all", action="store_true", help="markdown table of all variants")
    args = ap.parse_args(argv)
    if args.all:
        print("| model | size | params (M) | paper params (M) | GFLOPs | paper GFLOPs |")
        print("|---|---|---|---|---|---|")
        for name, (res, p_params, p_flops) in PAPER.items():
            model = timm.create_model(name, img_size=res)
            print(f"| {name} | {res} | {count_params(model) / 1e6:.2f} | {p_params:.2f} | "
                  f"{count_flops(model, (res, res)) / 1e9:.2f} | {p_flops:.2f} |", flush=True)
        return
    if not args.model:
        ap.error("give a model name or --all")
    kwargs = {"img_size": tuple(args.size)} if args.size else {}
    model = timm.create_model(args.model, **kwargs)
    size = tuple(args.size) if args.size else tuple(model.pretrained_cfg["input_size"][1:])
    print(f"{args.model} @ {size[0]}x{size[1]}: params {count_params(model) / 1e6:.2f} M, "
          f"GFLOPs {count_flops(model, size) / 1e9:.2f} (multiply-adds)")


if __name__ == "__main__":
    main()
