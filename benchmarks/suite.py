"""The benchmark suite, parent side: jobs in order, each in a fresh worker subprocess.

A worker per job (``python -m benchmarks.measure --worker``) makes peak memory that job's alone;
a job that runs out of memory or time is killed without taking the suite down, and the suite
turns it into an ``out_of_memory`` / ``too_slow`` record. Before a job runs, its cost is predicted
from the same series' previous (smaller) job, scaled by the ratio of FLOPs and of pixels for
memory; a job predicted over the time or memory budget is recorded as such without running.

``--malloc keep`` starts the workers with a glibc allocator that keeps freed memory (see
``MALLOC``): with glibc's defaults every tensor over 32 MB is a fresh mapping that the kernel
zeroes page by page, which at high resolution costs time that grows with the image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from .measure import ERROR, OK, OOM, PRECISIONS, TOO_SLOW, is_oom, run_job
from .report import one_line
from .workloads import EXTRA_OPS, OPS, ModelSpec, model_gflops, op_gflops, square_grid

__all__ = ["MALLOC", "MODES", "add_op_rooflines", "guard", "model_jobs", "op_jobs", "predict_s",
           "run_suite"]

MODES = ("infer", "train")
# glibc allocator settings for the worker processes ("system": as inherited). "keep": large
# blocks come from the heap instead of mmap and freed memory stays in the process, so a tensor
# allocated again reuses pages instead of fresh ones that the kernel must fault in and zero. On
# the machine of the README this zeroing was a quarter of the time at 2048 x 2048.
MALLOC = {"system": "", "keep": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold="
                                "68719476736"}


def _run_isolated(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    env = dict(os.environ)
    if job.get("malloc", "system") != "system":
        env["GLIBC_TUNABLES"] = MALLOC[job["malloc"]]
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.measure", "--worker"],
                              input=json.dumps(job), capture_output=True, text=True,
                              timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return dict(job, status=TOO_SLOW, reason=f"killed after the time limit of {timeout_s:.0f}"
                    f" s (budget {job['budget_s']:.0f} s + start-up allowance)")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if lines:
        return json.loads(lines[-1][len("RESULT "):])
    if proc.returncode in (-9, 137):
        return dict(job, status=OOM, reason="worker killed by SIGKILL (the kernel's OOM killer)")
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    status = OOM if any(is_oom(Exception(t)) for t in tail) else ERROR
    return dict(job, status=status, reason=f"worker exited {proc.returncode}: " + " | ".join(tail))


def _mem_available_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _series(job: dict[str, Any]) -> tuple:
    """Jobs of one series differ only in size: the previous one predicts the next."""
    keys = ("kind", "model", "kwargs", "op", "dim", "heads", "mode", "batch", "precision",
            "compile", "channels_last", "grad_checkpointing", "malloc")
    return tuple(json.dumps(job.get(k), sort_keys=True) for k in keys)


def predict_s(prev: dict[str, Any], job: dict[str, Any]) -> float | None:
    """Seconds per iteration of ``job`` from ``prev`` (the same series' previous successful
    record): scaled by FLOPs where both have them, else by ``work`` (the pixels a whole model
    processes: sliding-window crops included), else None."""
    for key in ("gflops", "work"):
        if prev.get(key) and job.get(key):
            return prev["latency_ms"] / 1e3 * job[key] / prev[key]
    return None


def guard(prev: dict[str, Any], job: dict[str, Any], budget_s: float,
          mem_budget_mb: float | None) -> dict[str, Any] | None:
    """A ``too_slow`` / ``out_of_memory`` record for ``job`` if its cost predicted from ``prev``
    (the same series' previous successful record) exceeds a budget, else None. Time scales with
    FLOPs (quadratic attention included) or work (``predict_s``), memory with pixels (tokens)."""
    per_iter = predict_s(prev, job)
    if per_iter is None:
        return None
    estimate = per_iter * (job["warmup"] + 1)
    scale = job["pixels"] / prev["pixels"]
    mem = (prev.get("peak_mem_mb") or 0.0) * scale
    if estimate > budget_s:
        return dict(job, status=TOO_SLOW, estimate_s=round(estimate, 1),
                    reason=f"predicted {estimate:.0f} s for warm-up + 1 run (from "
                           f"{prev['latency_ms'] / 1e3:.2f} s/iteration at {prev['pixels']} px, "
                           f"x FLOPs ratio) > budget {budget_s:.0f} s")
    if mem_budget_mb and mem > mem_budget_mb:
        return dict(job, status=OOM, estimate_mb=round(mem),
                    reason=f"predicted {mem:.0f} MB (from {prev['peak_mem_mb']:.0f} MB x "
                           f"{scale:.1f}) > memory budget {mem_budget_mb:.0f} MB")
    return None


def run_suite(jobs: Iterable[dict[str, Any]], budget_s: float = 120.0,
              mem_budget_mb: float | None = None, isolate: bool = True,
              startup_s: float = 90.0, long_job_s: float | None = None,
              log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run jobs in order (give each series' sizes ascending), with the guards of the module
    docstring. ``budget_s``: time for one job's iterations; ``mem_budget_mb``: memory for one job
    (CPU default: 70% of MemAvailable; CUDA: the device's memory). ``long_job_s``: a job predicted
    to take longer per iteration runs with no warm-up and one timed run (recorded in
    ``reduced``)."""
    avail = _mem_available_mb()
    last: dict[tuple, dict[str, Any]] = {}
    records = []
    for job in jobs:
        job = dict(job, budget_s=budget_s)
        mem = mem_budget_mb
        if job.get("device", "cpu").startswith("cuda"):
            if mem is None:
                mem = torch.cuda.get_device_properties(torch.device(job["device"])
                                                       ).total_memory / 2 ** 20
        else:
            mem = mem if mem is not None else (0.7 * avail if avail else None)
            if job["kind"] != "machine" and mem:
                job["mem_limit_mb"] = mem
        prev = last.get(_series(job))
        if prev is None and job.get("work"):
            # A whole model's first job of a phase (sliding window, training): predicted from
            # the same model's latest job of another phase, by work.
            prev = last.get(("work", job["kind"], job.get("model")))
        per_iter = predict_s(prev, job) if prev is not None else None
        if long_job_s and per_iter and per_iter > long_job_s and \
                (job["warmup"] or job["runs"] > 1):
            job.update(warmup=0, runs=1, reduced=f"warm-up 0 and 1 run: predicted "
                       f"{per_iter:.0f} s per iteration > {long_job_s:.0f} s")
        rec = guard(prev, job, budget_s, mem) if prev is not None else None
        if rec is None:
            rec = (_run_isolated(job, budget_s * 1.25 + startup_s) if isolate else run_job(job))
        rec.pop("mem_limit_mb", None)
        if rec["status"] == OK and rec["kind"] != "machine":
            last[_series(job)] = rec
            if rec.get("work"):
                last[("work", rec["kind"], rec.get("model"))] = rec
        records.append(rec)
        if log:
            log(one_line(rec))
    return records


def model_jobs(specs: Sequence[ModelSpec], sizes: Sequence[int], mode: str = "infer",
               batch: int = 1, precision: str = "32", compile: bool = False,
               channels_last: bool = False, device: str = "cpu", warmup: int = 1,
               runs: int = 3, threads: int | None = None, grad_checkpointing: bool = False,
               malloc: str = "system") -> list[dict[str, Any]]:
    """One job per (size, model), sizes ascending and models interleaved within a size, so that
    the models compared at one size are measured close together in time."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {MODES}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {tuple(PRECISIONS)}")
    jobs = []
    for size in sorted(sizes):
        for spec in specs:
            gflops, params = model_gflops(spec, size)
            jobs.append(dict(kind="model", model=spec.name, kwargs=spec.kwargs, label=spec.label,
                             size=size, pixels=size * size, mode=mode, batch=batch,
                             precision=precision, compile=compile, channels_last=channels_last,
                             grad_checkpointing=grad_checkpointing, malloc=malloc,
                             device=device, warmup=warmup, runs=runs, threads=threads,
                             gflops=round(gflops, 6), params_m=round(params, 3)))
    return jobs


def op_jobs(ops: Sequence[str], tokens: Sequence[int], dim: int = 96, heads: int = 3,
            batch: int = 1, precision: str = "32", device: str = "cpu", warmup: int = 1,
            runs: int = 5, threads: int | None = None, malloc: str = "system",
            compile: bool = False) -> list[dict[str, Any]]:
    """Attention-op jobs (machine reference first), token counts ascending, ops interleaved."""
    for op in ops:
        if op not in OPS + EXTRA_OPS:
            raise ValueError(f"unknown attention op {op!r}; use one of {OPS + EXTRA_OPS}")
    if dim % heads:
        raise ValueError(f"--dim {dim} is not divisible by --heads {heads}")
    jobs = [dict(kind="machine", device=device, threads=threads, malloc=malloc)]
    for n in sorted(tokens):
        for op in ops:
            jobs.append(dict(kind="op", op=op, label=op + (" compiled" if compile else ""),
                             compile=compile, tokens=n, pixels=n, grid=list(square_grid(n)),
                             dim=dim, heads=heads, batch=batch, precision=precision,
                             device=device, warmup=warmup, runs=runs, threads=threads,
                             malloc=malloc,
                             gflops=op_gflops(op, n, dim, heads, batch),
                             io_bytes=4 * n * dim * batch * 4))  # fp32 q, k, v in, output out
    return jobs


def add_op_rooflines(records: list[dict[str, Any]]) -> None:
    """Per op record: the time to read q, k, v and write the output once at the measured memory
    bandwidth (``bandwidth_ms``), the time of its FLOPs at the measured matmul throughput
    (``compute_ms``), and the op's time over each."""
    ref = next((r for r in records if r["kind"] == "machine" and r["status"] == OK), None)
    if ref is None:
        return
    for r in records:
        if r["kind"] == "op":
            r["bandwidth_ms"] = r["io_bytes"] / (ref["bandwidth_gb_s"] * 1e9) * 1e3
            r["compute_ms"] = r["gflops"] * 2 / ref["matmul_gflop_s"] * 1e3
            t = r.get("cpu_time_ms") or r.get("latency_ms")
            if r["status"] == OK and t:
                r["x_bandwidth"] = t / r["bandwidth_ms"]
                r["x_compute"] = t / r["compute_ms"]
