"""Speed and memory of timm models and attention ops against resolution (``tools/benchmark.py``).

Every measurement ("job") runs in a fresh subprocess (``python -m backbones.benchmark --worker``):
peak memory is then that job's alone, a job that runs out of memory or time is killed without
taking the suite down, and the suite turns it into an ``out_of_memory`` / ``too_slow`` record.
Before a job runs, its cost is predicted from the same series' previous (smaller) job, scaled by
the ratio of FLOPs (counted on the 'meta' device, so free at any size, quadratic attention
included) and of pixels for memory; a job predicted over the time or memory budget is recorded
as such without running.

``--malloc keep`` starts the workers with a glibc allocator that keeps freed memory (see
``MALLOC``): with glibc's defaults every tensor over 32 MB is a fresh mapping that the kernel
zeroes page by page, which at high resolution costs time that grows with the image.

Times: the median of several timed iterations after warm-up, as wall-clock (``latency_ms``) and,
on CPU, as process CPU time (``cpu_time_ms``), which other jobs on a shared machine disturb much
less (it does not count the time slices they take). Memory: CUDA ``max_memory_allocated`` on a
GPU; on CPU the growth of resident memory (peak ``VmHWM`` during the iterations minus ``VmRSS``
before them). FLOPs are forward multiply-adds per image, as the papers count them.

Pure torch + timm (matplotlib only for plots).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import attention as A
from . import flops as _flops  # noqa: F401  (registers the extra FLOP formulas)

__all__ = [
    "MODES",
    "EXTRA_OPS",
    "OPS",
    "PRECISIONS",
    "ModelSpec",
    "build_parser",
    "main",
    "format_table",
    "machine_reference",
    "op_jobs",
    "parse_model_spec",
    "plot_records",
    "run_job",
    "run_suite",
    "scaling_table",
]

MODES = ("infer", "train")
PRECISIONS = {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
OPS = ("inline", "linear", "l2vit", "softmax", "window")
# Not timed by default: the InLine op as the models computed it before it was fused (separate
# passes for the state, output, head merge and a 3x3 residual of nine shifted multiply-adds).
EXTRA_OPS = ("inline_unfused",)
# glibc allocator settings for the worker processes ("system": as inherited). "keep": large
# blocks come from the heap instead of mmap and freed memory stays in the process, so a tensor
# allocated again reuses pages instead of fresh ones that the kernel must fault in and zero. On
# the machine of the README this zeroing was a quarter of the time at 2048 x 2048.
MALLOC = {"system": "", "keep": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold="
                                "68719476736"}
# Status values of a record.
OK, OOM, TOO_SLOW, ERROR = "ok", "out_of_memory", "too_slow", "error"


# ---- model specs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A timm name plus constructor overrides, written ``name:key=value,key=value``."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # as written by the user

    @property
    def label(self) -> str:
        if self.text:
            return self.text
        if not self.kwargs:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.kwargs.items())


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets: ``depths=(1,1),embed_dim=16`` -> two items."""
    items, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [*items, cur]


def parse_model_spec(text: str) -> ModelSpec:
    """``inline_swin_tiny:attn_types=SSSS,global_softmax=True`` -> ModelSpec. Values are Python
    literals where they parse as one (numbers, booleans, tuples), strings otherwise."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"model spec {text!r} has no model name; write NAME[:key=value,...]")
    if name not in timm.list_models():
        import backbones  # noqa: F401  (our families register on import)
        if name not in timm.list_models():
            raise ValueError(f"unknown timm model {name!r}; see timm.list_models() (this repo's "
                             "models are inline_*/l2vit_*)")
    kwargs: dict[str, Any] = {}
    for item in filter(None, _split_top_level(rest)):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"model spec {text!r}: {item!r} is not key=value")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return ModelSpec(name, kwargs, text)


def build_model(spec: ModelSpec, size: int) -> nn.Module:
    """The model at ``size`` (``img_size`` where the model takes one), no drop path, no weights."""
    import backbones  # noqa: F401  (registers our families in a fresh worker)
    kwargs = dict(dict(drop_path_rate=0.0, pretrained=False), **spec.kwargs)
    try:
        return timm.create_model(spec.name, img_size=size, **kwargs)
    except TypeError as e:  # convolutional baselines have no img_size
        if "img_size" not in str(e):
            raise
        return timm.create_model(spec.name, **kwargs)


def model_gflops(spec: ModelSpec, size: int) -> tuple[float, float]:
    """(forward GMACs per image, params in M), counted on the 'meta' device: no memory, no time,
    so quadratic models can be counted at sizes they could never run at."""
    with torch.device("meta"):
        model = build_model(spec, size).eval()
        x = torch.empty(1, 3, size, size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2e9, params


# ---- attention ops ------------------------------------------------------------------------------

def _merge(t: torch.Tensor) -> torch.Tensor:
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def make_op(op: str, heads: int, hw: tuple[int, int], batch: int, dim: int, device: torch.device,
            window: int = 7) -> Callable[[torch.Tensor], torch.Tensor]:
    """One attention op as a function of the packed (B, N, 3C) output of a qkv projection,
    returning the (B, N, C) tensor that enters the output projection."""
    d = dim // heads
    if op == "inline":
        kernels = torch.randn(batch, dim, 3, 3, device=device) * 0.1

        def run(qkv):
            q, k, v = qkv.chunk(3, dim=-1)
            return A.inline_attention(q, k, v, heads, kernels, hw)
        return run

    def split(qkv):
        b, n, _ = qkv.shape
        return qkv.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)

    if op == "linear":
        return lambda qkv: _merge(A.plain_linear_attention(*(F.relu(t) if i < 2 else t
                                                             for i, t in enumerate(split(qkv)))))
    if op == "l2vit":
        temperature = torch.full((heads, 1, 1), d ** -0.5, device=device)
        return lambda qkv: _merge(A.l2vit_linear_attention(*split(qkv), temperature))
    if op == "softmax":
        return lambda qkv: _merge(A.softmax_attention(*split(qkv)))
    if op == "window":
        def run(qkv):
            b, _, c3 = qkv.shape
            x, ph, pw = A._pad_hw(qkv.view(b, hw[0], hw[1], c3), window, window)
            hp, wp = hw[0] + ph, hw[1] + pw
            win = A._window_partition(x, window, window)                       # (B nW, L, 3C)
            out = _merge(A.softmax_attention(*split(win)))
            return A._window_reverse(out, window, window, b, hp, wp)[:, :hw[0], :hw[1]].reshape(
                b, hw[0] * hw[1], dim)
        return run
    if op == "inline_unfused":
        kernels = torch.randn(batch, dim, 3, 3, device=device) * 0.1

        def run(qkv):
            q, k, v = split(qkv)
            out = _merge(A.injective_linear_attention(q, k, v, d ** -0.5))
            grid = _merge(v).transpose(1, 2).reshape(batch, dim, *hw)
            return out + A.predicted_local_residual(grid, kernels).flatten(2).transpose(1, 2)
        return run
    raise ValueError(f"unknown attention op {op!r}; use one of {OPS + EXTRA_OPS}")


def _grid(tokens: int) -> tuple[int, int]:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"--tokens {tokens} is not a square number; the ops run on a square "
                         f"grid (e.g. {side * side} or {(side + 1) ** 2})")
    return side, side


def op_gflops(op: str, tokens: int, dim: int, heads: int, batch: int) -> float:
    """Forward GFLOPs (multiply-adds) of one op call, counted on the 'meta' device."""
    with torch.device("meta"):
        fn = make_op(op, heads, _grid(tokens), batch, dim, torch.device("meta"))
        qkv = torch.empty(batch, tokens, 3 * dim)
    with FlopCounterMode(display=False) as counter:
        fn(qkv)
    return counter.get_total_flops() / 2e9


# ---- measuring (inside a worker) ----------------------------------------------------------------

def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings on a GPU are otherwise launch times)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _MemoryMeter:
    """Peak memory of what runs between ``start()`` and ``stop()``, in MB."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
        else:
            self.base = _proc_kb("VmRSS")
            self.kind = "cpu_rss_growth" if _reset_peak_rss() and self.base else None

    def stop(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        if self.kind is None:
            return None
        return max(0.0, (_proc_kb("VmHWM") - self.base) / 1024)


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text or \
        "can't allocate memory" in text or "cannot allocate memory" in text


def _profile(step: Callable[[], Any], device: torch.device, top: int = 15
             ) -> list[dict[str, Any]]:
    """One more iteration under torch.profiler: the operators with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [dict(op=e.key, calls=e.count, self_ms=round(getattr(e, key) / 1e3, 3))
            for e in rows]


def _time_iterations(step: Callable[[], Any], device: torch.device, warmup: int, runs: int,
                     budget_s: float, profile: bool = False) -> dict[str, Any]:
    """Warm-up iterations, then up to ``runs`` timed ones (fewer if the budget left cannot pay
    for them; at least one). Memory is measured over all of them."""
    meter = _MemoryMeter(device)
    meter.start()
    t0 = time.perf_counter()
    last = 0.0
    for _ in range(warmup):
        t = time.perf_counter()
        step()
        _sync(device)
        last = time.perf_counter() - t
    left = budget_s - (time.perf_counter() - t0)
    n = max(1, min(runs, int(left / last) if last > 0 else runs))
    wall, cpu, sys_t, faults = [], [], [], []
    for _ in range(n):
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        r = resource.getrusage(resource.RUSAGE_SELF)
        step()
        _sync(device)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        r2 = resource.getrusage(resource.RUSAGE_SELF)
        sys_t.append(r2.ru_stime - r.ru_stime)
        faults.append(r2.ru_minflt - r.ru_minflt)
    out = dict(runs=n, runs_ms=[round(w * 1e3, 3) for w in wall],
               latency_ms=statistics.median(wall) * 1e3, peak_mem_mb=meter.stop(),
               mem_kind=meter.kind)
    if device.type == "cpu":
        # Kernel time and page faults show allocation cost (fresh pages are zeroed by the OS).
        out.update(cpu_time_ms=statistics.median(cpu) * 1e3,
                   sys_time_ms=statistics.median(sys_t) * 1e3,
                   page_faults=int(statistics.median(faults)))
    if profile:
        out["profile"] = _profile(step, device)
    return out


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _model_job(job: dict[str, Any], device: torch.device) -> dict[str, Any]:
    spec = ModelSpec(job["model"], job.get("kwargs") or {})
    size, batch, precision = job["size"], job["batch"], job["precision"]
    model = build_model(spec, size).to(device)
    fmt = torch.channels_last if job.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    if job.get("grad_checkpointing"):
        model.set_grad_checkpointing(True)
    fn = torch.compile(model) if job.get("compile") else model
    if job["mode"] == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), _autocast(device, precision):
                fn(x)
    else:
        model.train()
        y = torch.randint(0, 10, (batch,), device=device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")

        def step():
            opt.zero_grad(set_to_none=True)
            with _autocast(device, precision):
                out = fn(x)
            loss = F.cross_entropy(out.float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return _time_iterations(step, device, job["warmup"], job["runs"], job["budget_s"],
                            job.get("profile", False))


def _op_job(job: dict[str, Any], device: torch.device) -> dict[str, Any]:
    tokens, dim, heads, batch = job["tokens"], job["dim"], job["heads"], job["batch"]
    fn = make_op(job["op"], heads, _grid(tokens), batch, dim, device)
    if job.get("compile"):
        fn = torch.compile(fn)
    qkv = torch.randn(batch, tokens, 3 * dim, device=device)

    def step():
        with torch.inference_mode(), _autocast(device, job["precision"]):
            fn(qkv)
    return _time_iterations(step, device, job["warmup"], job["runs"], job["budget_s"],
                            job.get("profile", False))


def machine_reference(device: torch.device, mb: int = 256) -> dict[str, Any]:
    """Memory bandwidth (copy of a buffer far larger than caches: read + write) and fp32 matmul
    throughput on this device, the two rooflines the attention ops are compared with."""
    def best(fn, reps=5):
        fn()
        _sync(device)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t)
        return min(ts)

    src = torch.randn(mb * 2 ** 18, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / best(lambda: dst.copy_(src))
    a = torch.randn(2048, 2048, device=device)
    matmul = 2 * 2048 ** 3 / best(lambda: a @ a, reps=3)
    return dict(kind="machine", device=_device_name(device), threads=torch.get_num_threads(),
                bandwidth_gb_s=bandwidth / 1e9, matmul_gflop_s=matmul / 1e9)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Measure one job in this process and return its record (status ok, or the failure)."""
    device = torch.device(job.get("device", "cpu"))
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    rec = {k: v for k, v in job.items() if k not in ("mem_limit_mb",)}
    rec.update(device=_device_name(device), threads=torch.get_num_threads(),
               glibc_tunables=os.environ.get("GLIBC_TUNABLES"))
    try:
        if job["kind"] == "machine":
            rec.update(machine_reference(device))
        else:
            rec.update(_model_job(job, device) if job["kind"] == "model" else _op_job(job, device))
        rec["status"] = OK
    except Exception as e:  # noqa: BLE001  (recorded, the suite goes on)
        rec.update(status=OOM if _is_oom(e) else ERROR, reason=f"{type(e).__name__}: {e}"[:500])
    if rec["status"] == OK and rec["kind"] != "machine":
        rec["images_per_s" if rec["kind"] == "model" else "calls_per_s"] = \
            job["batch"] / rec["latency_ms"] * 1e3
        if "cpu_time_ms" in rec and rec["kind"] == "model":
            rec["images_per_s_cpu"] = job["batch"] / rec["cpu_time_ms"] * 1e3
    return rec


def _worker_main() -> None:
    """``python -m backbones.benchmark --worker``: one job as JSON on stdin, its record as the
    last stdout line."""
    job = json.loads(sys.stdin.read())
    limit = job.get("mem_limit_mb")
    if limit and job.get("device", "cpu") == "cpu":
        # Allocations beyond the budget fail (a clean out-of-memory record) instead of waking
        # the kernel's OOM killer on a machine others share. RLIMIT_DATA counts heap and private
        # anonymous mappings, not the libraries.
        data_kb = _proc_kb("VmData") or 0.0
        cap = int((data_kb / 1024 + limit) * 2 ** 20)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    print("RESULT " + json.dumps(run_job(job)), flush=True)


# ---- the suite (parent side) --------------------------------------------------------------------

def _run_isolated(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    env = dict(os.environ)
    if job.get("malloc", "system") != "system":
        env["GLIBC_TUNABLES"] = MALLOC[job["malloc"]]
    try:
        proc = subprocess.run([sys.executable, "-m", "backbones.benchmark", "--worker"],
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
    status = OOM if any(_is_oom(Exception(t)) for t in tail) else ERROR
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


def guard(prev: dict[str, Any], job: dict[str, Any], budget_s: float,
          mem_budget_mb: float | None) -> dict[str, Any] | None:
    """A ``too_slow`` / ``out_of_memory`` record for ``job`` if its cost predicted from ``prev``
    (the same series' previous successful record) exceeds a budget, else None. Time scales with
    FLOPs (quadratic attention included), memory with pixels (tokens)."""
    if not (prev.get("gflops") and job.get("gflops")):
        return None
    per_iter = prev["latency_ms"] / 1e3 * job["gflops"] / prev["gflops"]
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
              startup_s: float = 90.0,
              log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run jobs in order (give each series' sizes ascending), with the guards of the module
    docstring. ``budget_s``: time for one job's iterations; ``mem_budget_mb``: memory for one job
    (CPU default: 70% of MemAvailable; CUDA: the device's memory)."""
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
        rec = guard(prev, job, budget_s, mem) if prev is not None else None
        if rec is None:
            rec = (_run_isolated(job, budget_s * 1.25 + startup_s) if isolate else run_job(job))
        rec.pop("mem_limit_mb", None)
        if rec["status"] == OK and rec["kind"] != "machine":
            last[_series(job)] = rec
        records.append(rec)
        if log:
            log(_one_line(rec))
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
                             compile=compile, tokens=n, pixels=n, grid=list(_grid(n)),
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


# ---- reporting ----------------------------------------------------------------------------------

def _time_key(records: Sequence[dict[str, Any]]) -> str:
    """The time reported: process CPU time where every record has it (CPU runs), else wall."""
    ok = [r for r in records if r["status"] == OK and r["kind"] != "machine"]
    return "cpu_time_ms" if ok and all("cpu_time_ms" in r for r in ok) else "latency_ms"


def _one_line(r: dict[str, Any]) -> str:
    if r["kind"] == "machine":
        if r["status"] != OK:
            return f"machine reference: {r['status']} ({r.get('reason')})"
        return (f"machine: {r['device']}, {r['threads']} threads, copy bandwidth "
                f"{r['bandwidth_gb_s']:.1f} GB/s, fp32 matmul {r['matmul_gflop_s']:.0f} GFLOP/s")
    where = f"{r['label']} @ {r['size']}px" if r["kind"] == "model" else \
        f"{r['op']} @ N={r['tokens']}"
    if r["status"] != OK:
        return f"{where}: {r['status']} ({r.get('reason')})"
    cpu = f", cpu {r['cpu_time_ms']:.1f} ms" if "cpu_time_ms" in r else ""
    mem = f", peak {r['peak_mem_mb']:.0f} MB" if r.get("peak_mem_mb") is not None else ""
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
        if r["kind"] in ("model", "op") and r["status"] == OK:
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
    r = next((r for r in records if r["kind"] in ("model", "op")), None)
    if r is None:
        return ""
    what = "attention ops" if r["kind"] == "op" else f"{r['mode']}, batch {r['batch']}"
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
    ok = [r for r in records if r["kind"] in ("model", "op") and r["status"] == OK]
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


# ---- command line (tools/benchmark.py) ----------------------------------------------------------

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
               "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py --iters 20")
    ap.add_argument("--models", nargs="+", default=[], metavar="NAME[:k=v,...]",
                    help="timm names, with constructor overrides after ':'")
    ap.add_argument("--sizes", nargs="+", type=int, default=[224, 512, 1024, 2048],
                    help="square input sizes (default: %(default)s)")
    ap.add_argument("--mode", choices=(*MODES, "det-step"), default="infer")
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
    if args.mode == "det-step":
        if not args.config:
            ap.error("--mode det-step needs --config (an MM detection config)")
        if min(args.iters, args.rounds) < 1 or args.warmup_iters < 0:
            ap.error("det-step: --iters and --rounds must be >= 1, --warmup-iters >= 0")
        return
    if args.op is None and not args.models:
        ap.error("give --models NAME ... (timm names), or --op for the attention-op mode")
    if args.op is not None and args.models:
        ap.error("--op times attention ops alone; run --models in a separate call")
    for name, value in (("--batch", args.batch), ("--runs", args.runs)):
        if value < 1:
            ap.error(f"{name} must be >= 1, got {value}")
    if args.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup}")
    if any(s < 32 for s in args.sizes):
        ap.error(f"--sizes must be >= 32 pixels, got {args.sizes}")
    if args.malloc != "system" and args.no_isolate:
        ap.error("--malloc applies at process start: it needs isolated jobs (drop --no-isolate)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible; use --device cpu")


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
        if args.plot:
            plot_records(records, args.plot, title=plot_title(records))
        return records
    meta = run_meta(argv)
    if args.op is not None:
        jobs = op_jobs(args.op or OPS, args.tokens, args.dim, args.heads, args.batch,
                       args.precision, args.device, args.warmup, args.runs, args.threads,
                       args.malloc, args.compile)
    else:
        specs = [parse_model_spec(m) for m in args.models]
        jobs = model_jobs(specs, args.sizes, args.mode, args.batch, args.precision,
                          args.compile, args.channels_last, args.device, args.warmup, args.runs,
                          args.threads, args.grad_checkpointing, args.malloc)
    if args.profile:
        jobs = [dict(j, profile=True) if j["kind"] != "machine" else j for j in jobs]
    records = run_suite(jobs, args.budget, args.mem_budget, isolate=not args.no_isolate,
                        log=lambda line: print(line, flush=True))
    add_op_rooflines(records)
    print()
    print(format_table(records))
    print()
    print(scaling_table(records))
    for r in records:
        if r.get("profile"):
            print(f"\nprofile of {r['label']} @ {r.get('size') or r.get('tokens')}: "
                  + ", ".join(f"{p['op']} {p['self_ms']:.2f} ms ({p['calls']}x)"
                              for p in r["profile"]))
    if args.out:
        write_results(args.out, meta, records)
        print(f"\nrecords: {args.out}")
    if args.plot:
        plot_records(records, args.plot, title=plot_title(records))
        print(f"plot: {args.plot}")
    return records


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker_main()
