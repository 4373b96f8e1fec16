#!/usr/bin/env python
"""Export a model with dynamic height and width, then check the file against eager PyTorch.

    python tools/export.py inline_swin_tiny --format onnx --out swin.onnx
    python tools/export.py inline_swin_tiny --features-only --format exported-program \\
        --out swin_features.pt2
    python tools/export.py configs/demo/fpn_inline-pvt-demo_demo-ade.py \\
        --checkpoint work_dirs/demo_seg/checkpoints/last.ckpt --format onnx --out seg.onnx

TARGET is a timm name of this project (the classifier, or with --features-only the backbone)
or an MM config (segmentation: the whole segmentor, logits out; detection: backbone + neck).
The file is checked at three other sizes (onnxruntime for ONNX), the largest difference
printed, and a JSON card written beside it (input, outputs, sizes, differences). See
lightning_modules/export.py.
"""

import argparse
import json
import sys

from lightning_modules.export import (
    FORMATS,
    check_export,
    export_model,
    load_target,
    parse_size,
    write_card,
)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="timm model name or MM config file")
    ap.add_argument("--checkpoint", help="a checkpoint of this project (Lightning .ckpt) or, "
                                         "for timm names, official / timm-layout weights")
    ap.add_argument("--format", choices=FORMATS, default="onnx")
    ap.add_argument("--out", required=True, help="file to write (.onnx or .pt2)")
    ap.add_argument("--features-only", action="store_true",
                    help="timm names: the backbone's feature maps instead of the classifier")
    ap.add_argument("--model-kwargs", default="{}",
                    help="timm names: builder arguments as JSON, e.g. '{\"attn_types\": \"SSSS\"}'")
    ap.add_argument("--size", type=parse_size, help="example size HxW (default: the model's)")
    ap.add_argument("--check-sizes", type=parse_size, nargs="+",
                    default=[parse_size(s) for s in ("250x333", "512x384", "1024x1024")],
                    help="sizes the exported file is compared with eager at")
    ap.add_argument("--min-size", type=int, default=None,
                    help="smallest height / width allowed (default: 64; detectors 128)")
    ap.add_argument("--max-size", type=int, default=4096, help="largest height / width allowed")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="exit status 1 if a difference exceeds this")
    args = ap.parse_args(argv)
    try:
        target = load_target(args.target, args.checkpoint, json.loads(args.model_kwargs),
                             args.features_only)
        min_size = args.min_size or target.min_size
        path = export_model(target, args.out, args.format, args.size, min_size,
                            args.max_size)
        diffs = check_export(target, path, args.format, args.check_sizes)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        sys.exit(f"export.py: error: {e}")
    card = write_card(target, path, args.format, diffs, min_size, args.max_size)
    worst = max(diffs.values())
    print(f"exported {target.kind} to {path} ({args.format}); input: {target.input}")
    for size, d in diffs.items():
        print(f"  {size}: max |exported - eager| = {d:.3g}")
    print(f"largest difference {worst:.3g} (tolerance {args.tolerance:g}); card: {card}")
    if worst > args.tolerance:
        sys.exit(1)
    return diffs


if __name__ == "__main__":
    main()
