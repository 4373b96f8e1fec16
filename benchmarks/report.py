"""Reporting of benchmark records: one-line log, markdown tables, log-log plots, JSON file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import timm
import torch

from .measure import OK

__all__ = ["format_table", "one_line", "plot_records", "plot_title", "run_meta",
           "scaling_table", "write_results"]


def _time_key(records: Sequence[dict[str, Any]]) -> str:
    """The time reported: process CPU time where every record has it (CPU runs), else wall."""
    ok = [r for r in records if r["status"] == OK and r["kind"] != "machine"]
    return "cpu_time_ms" if ok and all("cpu_time_ms" in r for r in ok) else "latency_ms"


def one_line(r: dict[str, Any]) -> str:
    if r["kind"] == "machine":
        if r["status"] != OK:
            return f"machine reference: {r['status']} ({r.get('reason')})"
        return (f"machine: {r['device']}, {r['threads']} threads, copy bandwidth "
                f"{r['bandwidth_gb_s']:.1f} GB/s, fp32 matmul {r['matmul_gflop_s']:.0f} GFLOP/s")
    where = f"{r['label']} @ {r['size']}px" if r["kind"] in ("model", "task") else \
        f"{r['op']} @ N={r['tokens']}"
    if r["status"] != OK:
        return f"{where}: {r['status']} ({r.get('reason')})"
    cpu = f", cpu {r['cpu_time_ms']:.1f} ms" if "cpu_time_ms" in r else ""
    mem = f", peak {r['peak_mem_mb']:.0f} MB" if r.get("peak_mem_mb") is not None else ""
    if r["kind"] == "task":
        parts = r.get("parts_cpu_ms") or r.get("parts_ms") or {}
        split = ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
        return f"{where}: {r['latency_ms']:.1f} ms{cpu}{mem} ({split})" + \
            (f" [{r['reduced']}]" if r.get("reduced") else "")
    return f"{where}: {r['latency_ms']:.1f} ms{cpu}{mem}, {r['gflops']:.3g} GFLOPs"


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the records (failures show their status and reason)."""
    key = _time_key(records)
    tname = "CPU ms" if key == "cpu_time_ms" else "ms"
    lines = []
    models = [r for r in records if r["kind"] == "model"]
    if models:
        lines += [f"| model | size | img/s | {tname} / iter | wall ms / iter | peak MB | GFLOPs |",
                  "|---|---|---|---|---|---|---|"]
        for r in models:
            if r["status"] == OK:
                ips = r["batch"] / r[key] * 1e3
                mem = "" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"
                lines.append(f"| {r['label']} | {r['size']} | {ips:.3g} | {r[key]:.1f} | "
                             f"{r['latency_ms']:.1f} | {mem} | {r['gflops']:.3g} |")
            else:
                lines.append(f"| {r['label']} | {r['size']} | {r['status']}: {r.get('reason')} "
                             f"| | | | {r['gflops']:.3g} |")
    ops = [r for r in records if r["kind"] == "op"]
    if ops:
        lines += ["", f"| op | N | {tname} | x bandwidth time | x matmul-throughput time | "
                      "GFLOPs |", "|---|---|---|---|---|---|"]
        for r in ops:
            if r["status"] == OK:
                xb = f"{r['x_bandwidth']:.1f}" if "x_bandwidth" in r else ""
                xc = f"{r['x_compute']:.1f}" if "x_compute" in r else ""
                lines.append(f"| {r['label']} | {r['tokens']} | {r[key]:.2f} | {xb} | {xc} | "
                             f"{r['gflops']:.3f} |")
            else:
                lines.append(f"| {r['label']} | {r['tokens']} | {r['status']}: {r.get('reason')} | "
                             f"| | {r['gflops']:.3f} |")
    return "\n".join(lines)


def scaling_table(records: Sequence[dict[str, Any]]) -> str:
    """Per model: cost growth from its smallest to its largest measured size over the growth of
    pixels (1.0 = exactly linear), for time and memory."""
    key = _time_key(records)
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] in ("model", "op", "task") and r["status"] == OK:
            by.setdefault(r["label"], []).append(r)
    lines = ["| series | from | to | pixel ratio | time ratio / pixel ratio | "
             "memory ratio / pixel ratio |", "|---|---|---|---|---|---|"]
    for label, rs in by.items():
        if len(rs) < 2:
            continue
        a, b = min(rs, key=lambda r: r["pixels"]), max(rs, key=lambda r: r["pixels"])
        p = b["pixels"] / a["pixels"]
        mem = ""
        if a.get("peak_mem_mb") and b.get("peak_mem_mb"):
            mem = f"{b['peak_mem_mb'] / a['peak_mem_mb'] / p:.2f}"
        lines.append(f"| {label} | {a['pixels']} | {b['pixels']} | {p:.0f} | "
                     f"{b[key] / a[key] / p:.2f} | {mem} |")
    return "\n".join(lines)


def plot_title(records: Sequence[dict[str, Any]]) -> str:
    """What the plotted records were measured with, in one line."""
    r = next((r for r in records if r["kind"] in ("task", "model", "op")), None)
    if r is None:
        return ""
    what = "attention ops" if r["kind"] == "op" else f"{r['mode']}, batch {r['batch']}"
    if r["kind"] == "task":
        what = f"{r['task']} ({', '.join(sorted({x['phase'] for x in records if 'phase' in x}))})"
    extra = [f"{r.get('threads')} thread(s)", f"precision {r['precision']}",
             f"malloc {r.get('malloc', 'system')}"]
    extra += [k.replace("_", " ") for k in ("compile", "channels_last", "grad_checkpointing")
              if r.get(k)]
    return ", ".join([what, r.get("device", ""), *extra])


def plot_records(records: Sequence[dict[str, Any]], path: str | os.PathLike,
                 title: str = "") -> None:
    """Log-log plots of time per image (or call) and peak memory against pixels (tokens), one line
    per series, with a dashed slope-1 (linear) reference through the lowest first point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = _time_key(records)
    ok = [r for r in records if r["kind"] in ("model", "op", "task") and r["status"] == OK]
    if not ok:
        raise ValueError("no successful measurement to plot")
    is_op = ok[0]["kind"] == "op"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = [(key, "CPU time" if key == "cpu_time_ms" else "time"), ("peak_mem_mb", "peak memory")]
    for ax, (field_, name) in zip(axes, panels, strict=True):
        series: dict[str, list[tuple[float, float]]] = {}
        for r in ok:
            value = r.get(field_)
            if value:  # time per image (or call); memory as measured, for the whole batch
                per = value / (r["batch"] if field_ != "peak_mem_mb" and not is_op else 1)
                series.setdefault(r["label"], []).append((r["pixels"], per))
        if not series:
            ax.set_visible(False)
            continue
        for i, (label, pts) in enumerate(series.items()):
            pts.sort()
            # The colour cycle has 10 colours: series beyond it get another line and marker.
            ax.plot(*zip(*pts, strict=True), marker="os^D"[i // 10 % 4],
                    ls=("-", "--", "-.", ":")[i // 10 % 4], label=label)
        x0, y0 = min((pts[0] for pts in series.values()), key=lambda p: p[1])
        xs = sorted({p for pts in series.values() for p, _ in pts})
        ax.plot(xs, [y0 * x / x0 for x in xs], "k--", lw=1,
                label=f"linear in {'N' if is_op else 'pixels'}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N" if is_op else "pixels per image")
        if field_ == "peak_mem_mb":
            ax.set_ylabel(f"{name} (MB, {ok[0].get('mem_kind')})")
        else:
            ax.set_ylabel(f"{name} per {'call' if is_op else 'image'} (ms)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_meta(argv: Sequence[str] | None) -> dict[str, Any]:
    """What the records were measured with (stored beside them)."""
    try:  # which code was measured
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return dict(command=" ".join(["tools/benchmark.py", *(argv if argv is not None
                                                          else sys.argv[1:])]),
                git=commit,
                started=time.strftime("%Y-%m-%d %H:%M:%S"), torch=torch.__version__,
                timm=timm.__version__, python=sys.version.split()[0], cpus=os.cpu_count(),
                load_average=[round(x, 2) for x in os.getloadavg()],
                env={k: os.environ[k] for k in ("OMP_NUM_THREADS", "GLIBC_TUNABLES",
                                                "CUDA_VISIBLE_DEVICES") if k in os.environ})


def write_results(path: str | os.PathLike, meta: dict[str, Any],
                  records: Sequence[dict[str, Any]]) -> None:
    meta = dict(meta, finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                load_average_end=[round(x, 2) for x in os.getloadavg()])
    with open(path, "w") as f:
        json.dump(dict(meta=meta, records=list(records)), f, indent=1)
