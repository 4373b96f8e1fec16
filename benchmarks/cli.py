"""Command line of ``tools/benchmark.py``: the model, op and whole-model (``seg`` / ``det``) modes
(``det_step`` has the fourth)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import torch

from .measure import PRECISIONS
from .report import format_table, plot_records, plot_title, run_meta, scaling_table, write_results
from .suite import MALLOC, MODES, add_op_rooflines, model_jobs, op_jobs, run_suite
from .workloads import EXTRA_OPS, OPS, parse_model_spec

__all__ = ["TASK_MODES", "build_parser", "check_args", "main"]

TASK_MODES = ("seg", "det")  # whole MM models (benchmarks.task)
DEFAULT_SIZES = {"seg": ["512", "1024", "1024x2048", "2048"], "det": ["800x1333", "1600x2666"]}


def _size(text: str) -> int | str:
    """A size argument: an int (square) or ``HxW`` (whole-model modes)."""
    if text.isdigit():
        return int(text)
    h, x, w = text.lower().partition("x")
    if not (x and h.isdigit() and w.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: write S or HxW, e.g. 1024 or 1024x2048")
    return text.lower()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tools/benchmark.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Images/s, latency, peak memory and GFLOPs of timm models against "
                    "resolution; attention ops against tokens (--op); the Lightning detection "
                    "step against mmengine's Runner (--mode det-step).",
        epilog="examples:\n"
               "  tools/benchmark.py --models inline_swin_tiny swin_tiny_patch4_window7_224 "
               "--sizes 512 1024 --out r.json --plot r.png\n"
               "  tools/benchmark.py --models inline_swin_tiny:attn_types=SSSS,global_softmax=True"
               " --sizes 512\n"
               "  tools/benchmark.py --op --tokens 1024 4096 16384 65536 --out ops.json\n"
               "  tools/benchmark.py --mode det-step --config "
               "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py --iters 20\n"
               "  tools/benchmark.py --mode seg --sizes 512 1024 1024x2048 --slide-sizes "
               "1024x2048 --models inline_swin_tiny l2vit_tiny swin_tiny_patch4_window7_224\n"
               "  tools/benchmark.py --mode det --sizes 800x1333 1600x2666 --phases infer train")
    ap.add_argument("--models", nargs="+", default=[], metavar="NAME[:k=v,...]",
                    help="timm names, with constructor overrides after ':'")
    ap.add_argument("--sizes", nargs="+", type=_size, default=None,
                    help="square input sizes (default: 224 512 1024 2048); seg / det modes "
                         "also HxW (default: seg " + " ".join(DEFAULT_SIZES["seg"]) + ", det "
                         + " ".join(DEFAULT_SIZES["det"]) + ")")
    ap.add_argument("--mode", choices=(*MODES, *TASK_MODES, "det-step"), default="infer",
                    help="infer / train: timm backbones (--models); seg / det: whole UperNet / "
                         "Mask R-CNN from MM configs (--task-models, with --models as the "
                         "backbones alone in the same run); det-step: Lightning vs Runner")
    ap.add_argument("--task-models", nargs="+", default=None, metavar="NAME",
                    help="seg / det: models of benchmarks.task.TASK_MODELS (default: all of "
                         "the task's)")
    ap.add_argument("--phases", nargs="+", default=None,
                    help="seg: whole and / or slide (sliding window at --slide-sizes; default: "
                         "both if --slide-sizes is given); det: infer and / or train (one "
                         "training step) (default: both)")
    ap.add_argument("--slide-sizes", nargs="+", type=_size, default=[],
                    help="seg: sizes for sliding-window inference (the configs' 512 crop, "
                         "stride 341)")
    ap.add_argument("--long-job", type=float, default=None, metavar="S",
                    help="a job predicted over S seconds per iteration (from its series' "
                         "previous size) runs with no warm-up and one timed run")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", choices=tuple(PRECISIONS), default="32")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (or, with --op, the op)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true",
                    help="train: recompute blocks in backward (timm's set_grad_checkpointing)")
    ap.add_argument("--malloc", choices=tuple(MALLOC), default="system",
                    help="glibc allocator of the jobs: system (inherited) or keep (freed memory "
                         "is reused, not returned to the OS; see MALLOC in the module)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in each job (default: torch's default)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up iterations per job")
    ap.add_argument("--runs", type=int, default=3, help="timed iterations per job (median)")
    ap.add_argument("--budget", type=float, default=120.0,
                    help="seconds one job's iterations may take; a job predicted (or found) "
                         "slower is recorded as too_slow (default: %(default)s)")
    ap.add_argument("--mem-budget", type=float, default=None, metavar="MB",
                    help="memory one job may use (CPU default: 70%% of MemAvailable)")
    ap.add_argument("--no-isolate", action="store_true",
                    help="run jobs in this process (no subprocess, no hard time limit)")
    ap.add_argument("--op", nargs="*", choices=OPS + EXTRA_OPS, default=None,
                    help="attention-only mode: time these ops (default: all) against --tokens")
    ap.add_argument("--tokens", nargs="+", type=int, default=[1024, 4096, 16384, 65536])
    ap.add_argument("--dim", type=int, default=96, help="op width (Swin-T stage 1: 96)")
    ap.add_argument("--heads", type=int, default=3, help="op heads (Swin-T stage 1: 3)")
    ap.add_argument("--config", help="det-step: MM detection config")
    ap.add_argument("--iters", type=int, default=20, help="det-step: timed iterations")
    ap.add_argument("--warmup-iters", type=int, default=5, help="det-step: untimed iterations")
    ap.add_argument("--rounds", type=int, default=2,
                    help="det-step: Runner, Lightning, Runner, ... this many times each")
    ap.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                    help="det-step: config overrides")
    ap.add_argument("--profile", action="store_true",
                    help="profile one more iteration of each job (torch.profiler); the "
                         "operators with the most self time go into the record and are printed")
    ap.add_argument("--from-json", metavar="FILE",
                    help="measure nothing: print the tables of FILE's records (and --plot them)")
    ap.add_argument("--out", help="JSON file for the records")
    ap.add_argument("--plot", help="PNG file for the log-log plot")
    return ap


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument errors that argparse cannot see, each naming the fix."""
    if args.from_json:
        return
    if args.mode in TASK_MODES:
        from .task import PHASES, TASK_MODELS, parse_shape

        args.sizes = args.sizes or DEFAULT_SIZES[args.mode]
        args.task_models = args.task_models or [n for n, m in TASK_MODELS.items()
                                                if m[0] == args.mode]
        args.phases = args.phases or [p for p in PHASES[args.mode]
                                      if p != "slide" or args.slide_sizes]
        for name in args.task_models:
            if TASK_MODELS.get(name, ("",))[0] != args.mode:
                ap.error(f"--task-models {name}: not a {args.mode} model; use "
                         f"{[n for n, m in TASK_MODELS.items() if m[0] == args.mode]}")
        for phase in args.phases:
            if phase not in PHASES[args.mode]:
                ap.error(f"--phases {phase}: {args.mode} has {PHASES[args.mode]}")
        for size in [*args.sizes, *args.slide_sizes]:
            try:
                parse_shape(size)
            except ValueError as e:
                ap.error(str(e))
        if "slide" in args.phases and not args.slide_sizes:
            ap.error("--phases slide needs --slide-sizes")
    else:
        args.sizes = args.sizes or [224, 512, 1024, 2048]
    if args.mode == "det-step":
        if not args.config:
            ap.error("--mode det-step needs --config (an MM detection config)")
        if min(args.iters, args.rounds) < 1 or args.warmup_iters < 0:
            ap.error("det-step: --iters and --rounds must be >= 1, --warmup-iters >= 0")
        return
    if args.mode not in TASK_MODES and any(isinstance(s, str) for s in args.sizes):
        ap.error(f"--sizes {args.sizes}: HxW sizes are for --mode seg / det; the backbone "
                 "modes take square sizes")
    if args.op is None and not args.models and args.mode not in TASK_MODES:
        ap.error("give --models NAME ... (timm names), or --op for the attention-op mode")
    if args.op is not None and args.models:
        ap.error("--op times attention ops alone; run --models in a separate call")
    for name, value in (("--batch", args.batch), ("--runs", args.runs)):
        if value < 1:
            ap.error(f"{name} must be >= 1, got {value}")
    if args.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup}")
    if any(isinstance(s, int) and s < 32 for s in args.sizes):
        ap.error(f"--sizes must be >= 32 pixels, got {args.sizes}")
    if args.malloc != "system" and args.no_isolate:
        ap.error("--malloc applies at process start: it needs isolated jobs (drop --no-isolate)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible; use --device cpu")


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None
         ) -> list[dict[str, Any]]:
    """Model and op modes of ``tools/benchmark.py``: run, print tables, write JSON and plot."""
    if args is None:
        ap = build_parser()
        args = ap.parse_args(argv)
        check_args(ap, args)
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
        records = data["records"]
        print(format_table(records) + "\n\n" + scaling_table(records))
        if any(r["kind"] == "task" for r in records):
            from .task_report import pair_table, plot_pairs

            print("\n" + pair_table(records))
            if args.plot:
                print("plots: " + ", ".join(plot_pairs(records, args.plot)))
        elif args.plot:
            plot_records(records, args.plot, title=plot_title(records))
        return records
    meta = run_meta(argv)
    if args.op is not None:
        jobs = op_jobs(args.op or OPS, args.tokens, args.dim, args.heads, args.batch,
                       args.precision, args.device, args.warmup, args.runs, args.threads,
                       args.malloc, args.compile)
    elif args.mode in TASK_MODES:
        jobs = _task_mode_jobs(args)
    else:
        specs = [parse_model_spec(m) for m in args.models]
        jobs = model_jobs(specs, args.sizes, args.mode, args.batch, args.precision,
                          args.compile, args.channels_last, args.device, args.warmup, args.runs,
                          args.threads, args.grad_checkpointing, args.malloc)
    if args.profile:
        jobs = [dict(j, profile=True) if j["kind"] != "machine" else j for j in jobs]
    records = run_suite(jobs, args.budget, args.mem_budget, isolate=not args.no_isolate,
                        long_job_s=args.long_job, log=lambda line: print(line, flush=True))
    add_op_rooflines(records)
    print()
    print(format_table(records))
    print()
    print(scaling_table(records))
    if args.mode in TASK_MODES:
        from .task_report import pair_table

        print("\n" + pair_table(records))
    for r in records:
        if r.get("profile"):
            print(f"\nprofile of {r['label']} @ {r.get('size') or r.get('tokens')}: "
                  + ", ".join(f"{p['op']} {p['self_ms']:.2f} ms ({p['calls']}x)"
                              for p in r["profile"]))
    if args.out:
        write_results(args.out, meta, records)
        print(f"\nrecords: {args.out}")
    if args.plot and args.mode in TASK_MODES:
        from .task_report import plot_pairs

        print("plots: " + ", ".join(plot_pairs(records, args.plot)))
    elif args.plot:
        plot_records(records, args.plot, title=plot_title(records))
        print(f"plot: {args.plot}")
    return records


def _task_mode_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The whole-model jobs and, with ``--models``, the timm backbones alone at the square sizes,
    all in one list ordered by pixels (at a size: the whole models first)."""
    from .task import parse_shape, task_jobs

    jobs = task_jobs(args.task_models, args.sizes, args.phases, args.slide_sizes, args.device,
                     args.warmup, args.runs, args.threads, args.precision, args.malloc)
    square = sorted({h for h, w in map(parse_shape, args.sizes) if h == w})
    if args.models and square:
        jobs += model_jobs([parse_model_spec(m) for m in args.models], square, "infer",
                           args.batch, args.precision, args.compile, args.channels_last,
                           args.device, args.warmup, args.runs, args.threads, False, args.malloc)
    return sorted(jobs, key=lambda j: j["pixels"])  # stable: the order within a size is kept
