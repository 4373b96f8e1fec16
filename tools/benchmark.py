#!/usr/bin/env python
"""Benchmark suite: speed and memory against resolution (see the benchmarks package).

    python tools/benchmark.py --models inline_swin_tiny swin_tiny_patch4_window7_224 \
        --sizes 224 512 1024 2048 --mode infer --batch 1 --out results.json --plot plot.png
    python tools/benchmark.py --op --tokens 1024 4096 16384 65536 --out ops.json
    python tools/benchmark.py --mode det-step --config CONFIG --iters 20
"""

from __future__ import annotations

from benchmarks.cli import build_parser, check_args
from benchmarks.cli import main as model_main


def main(argv: list[str] | None = None):
    ap = build_parser()
    args = ap.parse_args(argv)
    check_args(ap, args)
    if args.mode == "det-step":  # MM and Lightning are imported only for this mode
        from benchmarks.det_step import det_step_main
        return det_step_main(args, argv)
    return model_main(argv, args)


if __name__ == "__main__":
    main()
