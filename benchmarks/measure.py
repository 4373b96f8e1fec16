"""One measurement ("job") inside a worker process (``python -m benchmarks.measure --worker``).

Times: the median of several timed iterations after warm-up, as wall-clock (``latency_ms``) and,
on CPU, as process CPU time (``cpu_time_ms``), which other jobs on a shared machine disturb much
less (it does not count the time slices they take). Memory: CUDA ``max_memory_allocated`` on a
GPU; on CPU the growth of resident memory (peak ``VmHWM`` during the iterations minus ``VmRSS``
before them). FLOPs are forward multiply-adds per image, as the papers count them.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .workloads import ModelSpec, build_model, make_op, square_grid

__all__ = ["ERROR", "OK", "OOM", "PRECISIONS", "TOO_SLOW", "is_oom", "machine_reference",
           "run_job"]

PRECISIONS = {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
# Status values of a record.
OK, OOM, TOO_SLOW, ERROR = "ok", "out_of_memory", "too_slow", "error"


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


def is_oom(e: BaseException) -> bool:
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
    fn = make_op(job["op"], heads, square_grid(tokens), batch, dim, device)
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
        elif job["kind"] == "task":  # whole MM models: imports MM, only in these jobs
            from .task import task_job
            rec.update(task_job(job, device))
        else:
            rec.update(_model_job(job, device) if job["kind"] == "model" else _op_job(job, device))
        rec["status"] = OK
    except Exception as e:  # noqa: BLE001  (recorded, the suite goes on)
        rec.update(status=OOM if is_oom(e) else ERROR, reason=f"{type(e).__name__}: {e}"[:500])
    # The machine's load when the job ended: on a shared machine, what the wall times include.
    rec["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if rec["status"] == OK and rec["kind"] != "machine":
        per_image = rec["kind"] in ("model", "task")
        rec["images_per_s" if per_image else "calls_per_s"] = \
            job["batch"] / rec["latency_ms"] * 1e3
        if "cpu_time_ms" in rec and per_image:
            rec["images_per_s_cpu"] = job["batch"] / rec["cpu_time_ms"] * 1e3
    return rec


def _worker_main() -> None:
    """``python -m benchmarks.measure --worker``: one job as JSON on stdin, its record as the
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


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker_main()
