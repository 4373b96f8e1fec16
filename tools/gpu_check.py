#!/usr/bin/env python
"""One prepared check of the project on a GPU machine: numerics, attention ops, models, MM steps.

Runs from the project tree without installing it, with only torch and timm (matplotlib for the
plots where it imports; the MM part only where mmcv's ops import), and writes ``gpu_check.json``
plus plots to ``--out``:

    python tools/gpu_check.py --out DIR                 # on a GPU machine, ~7 min on one H100
    python tools/gpu_check.py --smoke --out DIR         # tiny sizes on CPU (or GPU): seconds
    python tools/gpu_check.py --plan --assume h100      # the plan and its time estimate, no run

Sections, in order of priority (what runs first survives a short budget):
  numerics   every family's tiny variant (random weights, fixed seed), forward and backward in
             fp32 and under bf16 / fp16 autocast on the device against CPU fp32: relative error
             of the output, the input gradient and the parameter gradients; the linear-attention
             ops in fp16 on inputs large enough that an fp16 K^T V overflows.
  ops        one attention layer's core (benchmarks.workloads.make_op, timed by
             benchmarks.measure.run_job, as ``tools/benchmark.py --op``): InLine with its local
             residual, plain linear, L2ViT, SDPA softmax and forced FlashAttention, N = 4k..262k
             tokens; time, GFLOP/s and achieved bandwidth against the measured copy bandwidth.
  models     InLine-Swin-T vs timm Swin-T, InLine-DeiT-T vs DeiT-T, 512..4096, batch 1 and 8,
             fp32 / bf16: images/s and peak memory (sizes ascending: 4096 where memory allows).
  train      one training step's peak memory (AdamW, bf16 then fp32) at 1024 and 2048.
  mm         if mmcv's ops import (with CUDA on a GPU): one Mask R-CNN step (demo config) and one
             UperNet step (configs/_base_/models/upernet_fcn-aux.py) in bf16 on generated data;
             mmcv nms / RoIAlign on CUDA against CPU.
  compile    the models again under torch.compile (the costliest rows: last).
  tasks      if the MM stack imports: the whole-model modes of ``tools/benchmark.py --mode seg
             / det`` (benchmarks.task): UperNet InLine-Swin-T and L2ViT-T against UperNet with
             mmseg's Swin-T, whole image at 512..2048 and sliding window at 1024x2048; Mask
             R-CNN InLine-Swin-T against mmdet's Swin-T at 800x1333 and 1600x2666, inference
             and one training step; fp32 (mmcv's RoIAlign has no bf16 CUDA kernel); time,
             peak memory and the backbone / neck / head split. Lowest priority: the default
             budget rarely reaches it; ``--sections tasks`` runs it alone.

Budget: every item has an estimate (FLOPs counted on the 'meta' device over the device's measured
matmul rate and copy bandwidth, refined by the items already measured); an item that would not fit
in what is left of ``--budget-s`` (default 420 s), or that would exceed the per-measurement cap, is
skipped and recorded with the reason. The JSON is rewritten after every item, so a run stopped from
outside keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Large, varying activations (4096^2 inputs): fewer fragmentation OOMs. Must precede CUDA's start.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from backbones import attention as A  # noqa: E402  (registers the families with timm)
from benchmarks.measure import OK, OOM, is_oom, machine_reference, run_job  # noqa: E402
from benchmarks.workloads import ModelSpec, model_gflops, op_gflops  # noqa: E402

JSON_NAME = "gpu_check.json"
FAMILIES = ("inline_deit_tiny", "inline_pvt_tiny", "inline_swin_tiny", "inline_cswin_tiny",
            "l2vit_tiny")
MODEL_PAIRS = (("inline_swin_tiny", "swin_tiny_patch4_window7_224"),
               ("inline_deit_tiny", "deit_tiny_patch16_224"))
OPS = ("inline", "linear", "l2vit", "softmax", "softmax_flash")
# Relative-error bounds under which a numerics row counts as agreeing with CPU fp32 (fp32 with
# TF32 off; autocast rounds activations to 8 (bf16) or 11 (fp16) mantissa bits).
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "bf16": 1.5e-1}
AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_FLAG = {"fp32": "32", "bf16": "bf16-mixed", "fp16": "16-mixed"}
# Nominal rates of one H100 (SXM, 80 GB) for --plan --assume h100: copy bandwidth and bf16 matmul
# as measured on the lent machines (device README, KINDS.md), fp32 matmul without TF32, and the
# machine's 16 cores for the CPU reference.
ASSUMED = {"h100": dict(bandwidth_gb_s=3000.0, matmul_gflop_s=50000.0,
                        matmul_bf16_gflop_s=750000.0, cpu_matmul_gflop_s=600.0,
                        memory_gb=80.0, name="cuda (assumed NVIDIA H100 80GB)")}


# ---- plan and budget ----------------------------------------------------------------------------

@dataclass
class Settings:
    """Sizes of one mode (full or smoke)."""

    numerics_size: int
    numerics_batch: int
    large_tokens: int
    op_tokens: tuple[int, ...]
    op_precisions: tuple[str, ...]
    model_sizes: tuple[int, ...]
    model_batches: tuple[int, ...]
    model_precisions: tuple[str, ...]
    train_sizes: tuple[int, ...]
    train_precisions: tuple[str, ...]
    train_pairs: tuple[tuple[str, str], ...]
    compile_rows: tuple[tuple[str, int, int], ...]  # (precision, size, batch)
    mm_size: int
    mm_batch: int
    mm_precisions: tuple[str, ...]  # tried in order until one step succeeds
    warmup: int
    runs: int
    job_cap_s: float  # no single measurement may be estimated above this
    # Whole-model (tasks) section: sizes as benchmarks.task takes them (S or HxW).
    seg_sizes: tuple[str, ...] = ()
    slide_sizes: tuple[str, ...] = ()
    det_sizes: tuple[str, ...] = ()
    det_phases: tuple[str, ...] = ("infer", "train")


FULL = Settings(numerics_size=224, numerics_batch=2, large_tokens=65536,
                op_tokens=(4096, 16384, 65536, 262144), op_precisions=("fp32", "bf16"),
                model_sizes=(512, 1024, 2048, 4096), model_batches=(1, 8),
                model_precisions=("bf16", "fp32"), train_sizes=(1024, 2048),
                train_precisions=("bf16", "fp32"), train_pairs=MODEL_PAIRS,
                compile_rows=(("bf16", 1024, 1),),
                mm_size=512, mm_batch=2, mm_precisions=("bf16", "fp32"), warmup=2, runs=5,
                job_cap_s=25.0, seg_sizes=("512", "1024", "1024x2048", "2048"),
                slide_sizes=("1024x2048",), det_sizes=("800x1333", "1600x2666"))
# Smoke: every code path once at sizes a loaded 2-core CPU runs in well under a minute (bf16 and
# fp16 autocast are slow on CPU, so only the numerics and the fp16 op check use them there).
SMOKE = Settings(numerics_size=32, numerics_batch=1, large_tokens=4096, op_tokens=(1024, 4096),
                 op_precisions=("fp32",), model_sizes=(64,), model_batches=(1,),
                 model_precisions=("fp32",), train_sizes=(64,), train_precisions=("fp32",),
                 train_pairs=MODEL_PAIRS[:1], compile_rows=(), mm_size=64, mm_batch=2,
                 mm_precisions=("fp32",),
                 warmup=1, runs=2, job_cap_s=20.0, seg_sizes=("64",), det_sizes=("64x96",),
                 det_phases=("infer",))


class Budget:
    """Seconds left of the run's budget, and the decision to run or skip an item."""

    def __init__(self, total_s: float, job_cap_s: float):
        self.total_s = total_s
        self.job_cap_s = job_cap_s
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def refuse(self, estimate_s: float, cap: bool = True) -> str | None:
        """Why an item estimated at ``estimate_s`` must be skipped; None if it may run."""
        if cap and estimate_s > self.job_cap_s:
            return (f"estimated {estimate_s:.1f} s, over the per-measurement cap of "
                    f"{self.job_cap_s:.0f} s")
        if estimate_s > self.left():
            return (f"estimated {estimate_s:.1f} s, more than the {max(self.left(), 0):.1f} s left "
                    f"of --budget-s {self.total_s:.0f}")
        return None


@dataclass
class Rates:
    """What the estimates divide by: measured (or assumed) device and CPU rates, refined per key
    from the items already measured."""

    bandwidth: float  # bytes/s, copy (read + write)
    fp32: float  # FLOP/s, device fp32 matmul
    half: float  # FLOP/s, device bf16 matmul
    cpu: float  # FLOP/s, CPU fp32 matmul (the numerics reference)
    gpu: bool
    measured: dict[str, float] = field(default_factory=dict)  # key -> FLOP/s seen
    compile_s: dict[str, float] = field(default_factory=dict)  # model -> compile overhead seen

    def flop_rate(self, precision: str, efficiency: float) -> float:
        peak = self.half if precision in ("bf16", "fp16") else self.fp32
        return peak * efficiency

    @property
    def call_floor_s(self) -> float:
        # a whole model call cannot beat its kernel launches / Python (CPU: interpreter overhead)
        return 0.004 if self.gpu else 0.002


def _gflops_cache() -> Callable[[str, int], float]:
    cache: dict[tuple[str, int], float] = {}

    def get(name: str, size: int) -> float:
        if (name, size) not in cache:
            cache[(name, size)] = model_gflops(ModelSpec(name), size)[0]
        return cache[(name, size)]
    return get


MODEL_GMACS = _gflops_cache()


def estimate_model_job(rates: Rates, name: str, size: int, batch: int, precision: str,
                       mode: str, settings: Settings, compiled: bool = False,
                       job_budget_s: float | None = None) -> float:
    """Seconds for one run_job of a model: build + warm-up + timed runs (capped by the job's own
    budget, as run_job does) + compile."""
    flops = 2e9 * MODEL_GMACS(name, size) * batch * (3 if mode == "train" else 1)
    key = f"{name}|{precision}|{mode}"
    rate = rates.measured.get(key) or rates.flop_rate(precision, 0.25 if rates.gpu else 0.3)
    call = max(rates.call_floor_s * (3 if mode == "train" else 1), flops / rate)
    timed = settings.runs * call
    if job_budget_s is not None:
        timed = min(timed, max(call, job_budget_s - settings.warmup * call))
    build = 0.5 + 0.5 * rates.gpu
    extra = 0.0
    if compiled:
        extra = rates.compile_s.get(name, 45.0 if rates.gpu else 60.0)
    return build + settings.warmup * call + timed + extra


def learn_model_rate(rates: Rates, rec: dict[str, Any], name: str, size: int, precision: str,
                     mode: str) -> None:
    """Keep the FLOP rate a measured job achieved where it ran long enough to be compute-bound
    (a launch-bound call at a small size would predict large sizes far too slow)."""
    if rec.get("status") != OK or not rec.get("latency_ms"):
        return
    latency = rec["latency_ms"] / 1e3
    if latency < 5 * rates.call_floor_s:
        return
    flops = 2e9 * MODEL_GMACS(name, size) * rec["batch"] * (3 if mode == "train" else 1)
    rates.measured[f"{name}|{precision}|{mode}"] = flops / latency


# Whole models, forward multiply-adds per pixel (UperNet Swin-T: ~236 GMACs at 512 x 512; Mask
# R-CNN Swin-T: ~267 GMACs at 800 x 1333 incl. a ~20 GMACs box and mask head), the a-priori
# estimate of the tasks section; measured items replace it (learn_task_rate).
TASK_MACS_PER_PIXEL = {"seg": 236e9 / 512 ** 2, "det": 247e9 / (800 * 1333)}
TASK_FIXED_MACS = {"seg": 0.0, "det": 20e9}


def task_macs(job: dict[str, Any]) -> float:
    """Forward multiply-adds of one task job's call (a slide job: all its crops)."""
    macs = TASK_FIXED_MACS[job["task"]] + TASK_MACS_PER_PIXEL[job["task"]] * job["work"]
    return macs * (3 if job["phase"] == "train" else 1)


def estimate_task_job(rates: Rates, job: dict[str, Any], settings: Settings,
                      job_budget_s: float | None = None) -> float:
    """Seconds for one task job: MM model build + warm-up + timed runs (capped as run_job
    caps them)."""
    key = f"task|{job['task']}|{job['phase']}"
    rate = rates.measured.get(key) or rates.flop_rate("fp32", 0.2 if rates.gpu else 0.3)
    call = max(rates.call_floor_s * 20, 2 * task_macs(job) / rate)  # many small kernels
    timed = settings.runs * call
    if job_budget_s is not None:
        timed = min(timed, max(call, job_budget_s - settings.warmup * call))
    return 3.0 + settings.warmup * call + timed


def learn_task_rate(rates: Rates, rec: dict[str, Any]) -> None:
    if rec.get("status") == OK and rec.get("latency_ms", 0) > 5 * rates.call_floor_s * 1e3:
        rates.measured[f"task|{rec['task']}|{rec['phase']}"] = \
            2 * task_macs(rec) / (rec["latency_ms"] / 1e3)


def task_plan_jobs(s: Settings, device: str) -> list[dict[str, Any]]:
    """The tasks section's jobs (benchmarks.task), seg then det, sizes ascending."""
    from benchmarks.task import TASK_MODELS, task_jobs

    seg = [n for n, m in TASK_MODELS.items() if m[0] == "seg"]
    det = [n for n, m in TASK_MODELS.items() if m[0] == "det"]
    jobs = []
    if s.seg_sizes:
        jobs += task_jobs(seg, s.seg_sizes, ("whole", "slide") if s.slide_sizes else ("whole",),
                          s.slide_sizes, device, s.warmup, s.runs)
    if s.det_sizes:
        jobs += task_jobs(det, s.det_sizes, s.det_phases, (), device, s.warmup, s.runs)
    return jobs


def estimate_op_job(rates: Rates, op: str, tokens: int, precision: str, settings: Settings,
                    dim: int = 96, heads: int = 3) -> float:
    gflop = 2 * op_gflops("softmax" if op == "softmax_flash" else op, tokens, dim, heads, 1)
    traffic = 16 * tokens * dim  # the fp32 qkv read once, the output written once
    compute_eff = 0.3 if op.startswith("softmax") else 0.05  # small d x d products
    call = max(1e-4, gflop * 1e9 / rates.flop_rate(precision, compute_eff),
               3 * traffic / rates.bandwidth)
    if op == "softmax" and precision == "fp32" and rates.gpu:
        call *= 3  # fp32 SDPA has no flash kernel: the memory-efficient one, slower
    timed = min(settings.runs * call, max(call, 5.0))
    return 0.2 + settings.warmup * call + timed


# ---- helpers ------------------------------------------------------------------------------------

def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64 on the CPU (inf where a is not finite)."""
    a = a.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    if not torch.isfinite(a).all():
        return math.inf
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def _clean(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _strict_fp32() -> Iterator[None]:
    """TF32 off for the fp32 comparison (cuDNN convolutions allow it by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = AUTOCAST[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _error(e: BaseException) -> dict[str, Any]:
    status = OOM if is_oom(e) else "error"
    return dict(status=status, reason=f"{type(e).__name__}: {e}"[:600])


# ---- the run ------------------------------------------------------------------------------------

class OverBudget(BaseException):
    """Raised by the watchdog: a BaseException, so that no per-item ``except Exception`` records
    it and carries on."""


def _over_budget(signum: int, frame: Any) -> None:
    raise OverBudget(f"past --budget-s plus {GRACE_S:.0f} s of grace")


class Check:
    """The run's state: device, settings, budget, estimates and the growing JSON report."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.settings = SMOKE if args.smoke else FULL
        self.device = torch.device(args.device)
        self.budget = Budget(args.budget_s, self.settings.job_cap_s)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.report: dict[str, Any] = dict(meta=self._meta(), sections={}, skipped=[])
        self.rates: Rates | None = None

    # -- bookkeeping --
    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = dict(
            argv=sys.argv, smoke=self.args.smoke, budget_s=self.args.budget_s,
            started=time.strftime("%Y-%m-%d %H:%M:%S"), python=platform.python_version(),
            torch=torch.__version__, torch_cuda=torch.version.cuda, timm=timm.__version__,
            device=str(self.device), cpu_count=os.cpu_count(),
        )
        try:
            meta["git_commit"] = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            meta["git_commit"] = None
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            meta.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                        gpu_memory_gb=round(props.total_memory / 2 ** 30, 1),
                        multiprocessors=props.multi_processor_count,
                        cudnn=torch.backends.cudnn.version(),
                        flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled())
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                meta["nvidia_smi"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                     "--format=csv,noheader"], capture_output=True, text=True, timeout=20
                ).stdout.strip()
        for name in ("triton", "lightning", "matplotlib", "mmcv", "mmdet", "mmsegmentation"):
            with contextlib.suppress(Exception):
                from importlib import metadata
                meta[f"{name}_version"] = metadata.version(name)
        return meta

    def save(self) -> None:
        self.report["meta"]["elapsed_s"] = round(self.budget.elapsed(), 2)
        path = self.out / JSON_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_json_safe(self.report), indent=1))
        tmp.replace(path)

    def skip(self, section: str, item: str, reason: str, estimate_s: float | None = None) -> None:
        self.report["skipped"].append(dict(section=section, item=item, reason=reason,
                                           estimate_s=None if estimate_s is None
                                           else round(estimate_s, 2)))
        print(f"  skip {section}/{item}: {reason}", flush=True)

    def section(self, name: str) -> list[dict[str, Any]] | dict[str, Any]:
        return self.report["sections"].setdefault(name, [])

    # -- calibration --
    def calibrate(self) -> Rates:
        t = time.perf_counter()
        if self.device.type == "cuda":
            dev = machine_reference(self.device, mb=256)
        else:
            dev = cpu_reference()
        half = dev["matmul_gflop_s"]
        if self.device.type == "cuda":
            a = torch.randn(4096, 4096, device=self.device, dtype=torch.bfloat16)
            for _ in range(3):
                a @ a
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                a @ a
            torch.cuda.synchronize()
            half = 10 * 2 * 4096 ** 3 / (time.perf_counter() - t0) / 1e9
            cpu = cpu_reference()["matmul_gflop_s"]
        else:
            cpu = dev["matmul_gflop_s"]
        cal = dict(dev, matmul_bf16_gflop_s=half, cpu_matmul_gflop_s=cpu,
                   seconds=round(time.perf_counter() - t, 2))
        self.report["calibration"] = cal
        print(f"calibration: copy {cal['bandwidth_gb_s']:.0f} GB/s, fp32 matmul "
              f"{cal['matmul_gflop_s']:.0f} GFLOP/s, bf16 {half:.0f}, CPU {cpu:.0f}", flush=True)
        return rates_from(cal, self.device.type == "cuda")

    # -- the sections --
    def run(self) -> None:
        print(f"gpu_check: device {self.device}, {'smoke' if self.args.smoke else 'full'} mode, "
              f"budget {self.args.budget_s:.0f} s", flush=True)
        self.rates = self.calibrate()
        plan = build_plan(self.rates, self.settings, self.device.type == "cuda",
                          self.args.sections)
        self.report["plan"] = plan
        total = sum(p["estimate_s"] for p in plan)
        self.report["plan_estimate_s"] = round(total, 1)
        print(f"plan: {len(plan)} items, estimated {total:.0f} s on this device", flush=True)
        self.save()
        # Estimates can be wrong (a compile taking minutes): past the budget and a grace period
        # the item in flight is abandoned and the run ends with what it has.
        watchdog = hasattr(signal, "SIGALRM")
        if watchdog:
            signal.signal(signal.SIGALRM, _over_budget)
            signal.setitimer(signal.ITIMER_REAL, max(1.0, self.budget.left() + GRACE_S))
        name = ""
        try:
            for name, fn in (("numerics", self.numerics), ("ops", self.ops),
                             ("models", self.models), ("train", self.train), ("mm", self.mm),
                             ("compile", self.compiled), ("tasks", self.tasks)):
                if name not in self.args.sections:
                    continue
                print(f"[{name}] {self.budget.elapsed():.0f} s elapsed", flush=True)
                try:
                    fn()
                except Exception as e:  # noqa: BLE001  (a broken section must not lose the rest)
                    self.report["sections"][f"{name}_error"] = dict(
                        _error(e), traceback=traceback.format_exc()[-3000:])
                    print(f"  section {name} failed: {e}", flush=True)
                _clean(self.device)
                self.save()
        except OverBudget as e:
            self.report["stopped"] = dict(section=name, reason=str(e),
                                          at_s=round(self.budget.elapsed(), 1))
            print(f"  stopped in {name}: {e}", flush=True)
        finally:
            if watchdog:
                signal.setitimer(signal.ITIMER_REAL, 0)
        self.report["summary"] = summarise(self.report)
        self.report["plots"] = make_plots(self.report, self.out)
        self.save()
        print(f"done in {self.budget.elapsed():.1f} s: {self.out / JSON_NAME}", flush=True)

    def numerics(self) -> None:
        s, dev = self.settings, self.device
        rows = self.section("numerics")
        # On a CPU "device" fp32 against CPU fp32 is the same computation: nothing to compare;
        # CPU bf16 / fp16 matmuls are slow (no native kernels on most CPUs), so bf16 alone there.
        precisions = ("fp32", "bf16", "fp16") if dev.type == "cuda" else ("bf16",)
        est = numerics_prior(s, self.rates.gpu)
        for name in FAMILIES:
            reason = self.budget.refuse(est)
            if reason:
                self.skip("numerics", name, reason, est)
                continue
            t = time.perf_counter()
            try:
                rows.extend(compare_family(name, s.numerics_size, s.numerics_batch, dev,
                                           precisions))
            except Exception as e:  # noqa: BLE001
                rows.append(dict(model=name, **_error(e)))
            took = time.perf_counter() - t
            est = max(est, 1.5 * took)  # the families cost alike (CSwin the most)
            print(f"  {name}: {took:.1f} s", flush=True)
            self.save()
        est = 2.0 + s.large_tokens * 1e-5
        reason = self.budget.refuse(est)
        if reason:
            self.skip("numerics", "fp16_large_inputs", reason, est)
            return
        self.report["sections"]["fp16_large_inputs"] = fp16_large_inputs(dev, s.large_tokens)

    def ops(self) -> None:
        s, dev = self.settings, self.device
        rows = self.section("ops")
        bandwidth = self.report["calibration"]["bandwidth_gb_s"]
        for tokens in s.op_tokens:
            for precision in s.op_precisions:
                for op in OPS:
                    item = f"{op} N={tokens} {precision}"
                    if op == "softmax_flash" and (dev.type != "cuda" or precision == "fp32"):
                        continue  # FlashAttention: CUDA and 16-bit inputs only
                    est = estimate_op_job(self.rates, op, tokens, precision, s)
                    reason = self.budget.refuse(est)
                    if reason:
                        self.skip("ops", item, reason, est)
                        continue
                    rec = time_op(op, tokens, precision, dev, s,
                                  min(5.0, max(0.5, self.budget.left() / 4)))
                    rec["estimate_s"] = round(est, 2)
                    if rec.get("status") == OK:
                        traffic = 16 * tokens * rec["dim"]
                        rec["gb_s"] = traffic / (rec["latency_ms"] / 1e3) / 1e9
                        rec["bandwidth_fraction"] = rec["gb_s"] / bandwidth
                        gflop = 2 * op_gflops("softmax" if op == "softmax_flash" else op,
                                              tokens, rec["dim"], rec["heads"], 1)
                        rec["gflop_s"] = gflop / (rec["latency_ms"] / 1e3)
                    rows.append(rec)
                    _clean(dev)
            self.save()

    def _model_row(self, section: str, name: str, size: int, batch: int, precision: str,
                   mode: str, compiled: bool = False) -> None:
        s, dev = self.settings, self.device
        item = f"{name} {size}px b{batch} {precision} {mode}{' compiled' if compiled else ''}"
        job_budget = min(8.0, max(1.0, self.budget.left() / 6))
        est = estimate_model_job(self.rates, name, size, batch, precision, mode, s, compiled,
                                 job_budget)
        reason = self.budget.refuse(est, cap=not compiled)
        if reason is None:
            reason = self._predicted_oom(name, size, batch, precision, mode)
        if reason:
            self.skip(section, item, reason, est)
            return
        if compiled:  # the first (warm-up) call compiles: its time must not eat the runs'
            job_budget += self.rates.compile_s.get(name, 45.0 if self.rates.gpu else 60.0)
        job = dict(kind="model", model=name, size=size, batch=batch,
                   precision=PRECISION_FLAG[precision], mode=mode, device=str(dev),
                   warmup=s.warmup if not compiled else 1, runs=s.runs, budget_s=job_budget,
                   compile=compiled)
        t = time.perf_counter()
        rec = run_job(job)
        wall = time.perf_counter() - t
        rec.update(precision=precision, estimate_s=round(est, 2), wall_s=round(wall, 2),
                   gmacs_per_image=MODEL_GMACS(name, size))
        if compiled and rec.get("status") == OK:
            self.rates.compile_s[name] = max(0.0, wall - sum(rec["runs_ms"]) / 1e3)
        if not compiled:
            learn_model_rate(self.rates, rec, name, size, precision, mode)
        self.section(section).append(rec)
        status = rec.get("status")
        detail = (f"{rec['latency_ms']:.1f} ms, {rec.get('peak_mem_mb') or 0:.0f} MB"
                  if status == OK else rec.get("reason", "")[:120])
        print(f"  {item}: {status} {detail} ({wall:.1f} s, est {est:.1f})", flush=True)
        _clean(dev)

    def _predicted_oom(self, name: str, size: int, batch: int, precision: str,
                       mode: str) -> str | None:
        """Skip a size whose memory, scaled by pixels from a smaller size already measured,
        would exceed the device's (the OOM would be caught, but costs the time to reach it)."""
        if self.device.type != "cuda":
            return None
        total = torch.cuda.get_device_properties(self.device).total_memory / 2 ** 20
        for sec in ("models", "train"):
            for rec in self.report["sections"].get(sec, []):
                if (rec.get("model"), rec.get("precision"), rec.get("mode"), rec.get("batch")) \
                        != (name, precision, mode, batch):
                    continue
                if rec.get("status") == OOM and rec["size"] <= size:
                    return f"out of memory already at {rec['size']} px"
                if rec.get("status") == OK and rec.get("peak_mem_mb") and rec["size"] < size:
                    predicted = rec["peak_mem_mb"] * (size / rec["size"]) ** 2
                    if predicted > 0.95 * total:
                        return (f"predicted {predicted / 1024:.0f} GiB from {rec['size']} px, "
                                f"device has {total / 1024:.0f} GiB")
        return None

    def models(self) -> None:
        s = self.settings
        for size in s.model_sizes:
            for pair in MODEL_PAIRS:
                for name in pair:
                    for precision in s.model_precisions:
                        for batch in s.model_batches:
                            self._model_row("models", name, size, batch, precision, "infer")
            self.save()

    def train(self) -> None:
        s = self.settings
        for precision in s.train_precisions:
            for size in s.train_sizes:
                for pair in s.train_pairs:
                    for name in pair:
                        self._model_row("train", name, size, 1, precision, "train")
                self.save()

    def compiled(self) -> None:
        for precision, size, batch in self.settings.compile_rows:
            for pair in MODEL_PAIRS:
                for name in pair:
                    self._model_row("compile", name, size, batch, precision, "infer",
                                    compiled=True)
                    self.save()

    def mm(self) -> None:
        s, dev = self.settings, self.device
        est = mm_prior(dev.type == "cuda")
        reason = mm_unavailable(dev) or self.budget.refuse(est, cap=False)
        if reason:
            self.skip("mm", "Mask R-CNN / UperNet steps, nms / RoIAlign", reason, est)
            return
        out = self.report["sections"].setdefault("mm", {})
        for task, fn in (("mask_rcnn_step", mm_det_step), ("upernet_step", mm_seg_step)):
            # bf16 as asked; where it fails, fp32 too, so that the step itself is still checked
            for precision in s.mm_precisions:
                key = f"{task}_{precision}"
                try:
                    out[key] = fn(dev, s.mm_size, s.mm_batch, precision)
                except Exception as e:  # noqa: BLE001
                    out[key] = dict(_error(e), precision=precision,
                                    traceback=traceback.format_exc()[-2500:])
                print(f"  {key}: {out[key].get('status')} {out[key].get('reason', '')[:200]}",
                      flush=True)
                _clean(dev)
                self.save()
                if out[key].get("status") == OK:
                    break
        if dev.type == "cuda":
            try:
                out["ops_cuda_vs_cpu"] = mmcv_ops_cuda_vs_cpu(dev)
            except Exception as e:  # noqa: BLE001
                out["ops_cuda_vs_cpu"] = _error(e)
        else:
            self.skip("mm", "nms / RoIAlign CUDA vs CPU", "no CUDA device")

    def tasks(self) -> None:
        """Whole models from MM configs: the jobs of ``tools/benchmark.py --mode seg / det``,
        run in this process by run_job (CUDA peak memory is per job)."""
        from benchmarks.task_report import pair_rows

        s, dev = self.settings, self.device
        reason = mm_unavailable(dev)
        if reason:
            self.skip("tasks", "UperNet / Mask R-CNN whole models", reason)
            return
        rows = self.section("tasks")
        group_fits: dict[tuple[str, str, str], bool] = {}
        for job in task_plan_jobs(s, str(dev)):
            item = f"{job['label']} {job['size']}"
            job_budget = min(8.0, max(1.0, self.budget.left() / 6))
            est = estimate_task_job(self.rates, job, s, job_budget)
            # The models compared at a (size, phase) run all or none: half a pair tells nothing.
            group = (job["task"], job["phase"], job["size"])
            if group not in group_fits:
                n = sum(1 for j in task_plan_jobs(s, str(dev))
                        if (j["task"], j["phase"], j["size"]) == group)
                group_fits[group] = self.budget.refuse(n * est, cap=False) is None
            reason = self.budget.refuse(est) or (None if group_fits[group] else
                                                 "the other models of its pair would not fit")
            if reason:
                self.skip("tasks", item, reason, est)
                continue
            t = time.perf_counter()
            rec = run_job(dict(job, budget_s=job_budget))
            rec.update(estimate_s=round(est, 2), wall_s=round(time.perf_counter() - t, 2))
            learn_task_rate(self.rates, rec)
            rows.append(rec)
            detail = (f"{rec['latency_ms']:.1f} ms, {rec.get('peak_mem_mb') or 0:.0f} MB, "
                      + ", ".join(f"{k} {v:.0f}" for k, v in rec["parts_ms"].items())
                      if rec["status"] == OK else rec.get("reason", "")[:160])
            print(f"  {item}: {rec['status']} {detail}", flush=True)
            _clean(dev)
            self.save()
        self.report["sections"]["tasks_pairs"] = pair_rows(rows)


def cpu_reference(mb: int = 32, n: int = 768) -> dict[str, Any]:
    """Copy bandwidth and fp32 matmul rate of the CPU, as benchmarks.measure.machine_reference
    measures them but on smaller buffers (that one's 2048^3 products take seconds on 2 cores)."""
    def best(fn: Callable[[], Any], reps: int = 3) -> float:
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    src = torch.randn(mb * 2 ** 18)
    dst = torch.empty_like(src)
    a = torch.randn(n, n)
    return dict(kind="machine", device=f"cpu ({os.cpu_count()} cores)",
                threads=torch.get_num_threads(),
                bandwidth_gb_s=2 * src.numel() * 4 / best(lambda: dst.copy_(src)) / 1e9,
                matmul_gflop_s=2 * n ** 3 / best(lambda: a @ a) / 1e9)


def mm_prior(gpu: bool) -> float:
    """MM imports (~5 s), two model builds and two steps each (a bf16 failure retried in fp32)."""
    return 30.0 if gpu else 15.0


def numerics_prior(s: Settings, gpu: bool) -> float:
    """Seconds for one family before any was measured: model build, the CPU fp32 reference at
    224 px (~1 s on 16 cores) and three device passes (cuDNN / cuBLAS warm-up the first time)."""
    return 6.0 if gpu else 3.0 if s.numerics_size <= 64 else 10.0


def rates_from(cal: dict[str, Any], gpu: bool) -> Rates:
    return Rates(bandwidth=cal["bandwidth_gb_s"] * 1e9, fp32=cal["matmul_gflop_s"] * 1e9,
                 half=cal["matmul_bf16_gflop_s"] * 1e9, cpu=cal["cpu_matmul_gflop_s"] * 1e9,
                 gpu=gpu)


def build_plan(rates: Rates, s: Settings, gpu: bool, sections: tuple[str, ...]
               ) -> list[dict[str, Any]]:
    """Every item of the chosen sections with its a-priori estimate (seconds), in run order.
    (Estimates count FLOPs: only the chosen sections are estimated.)"""
    plan: list[dict[str, Any]] = []

    def add(section: str, item: str, estimate_s: float) -> None:
        plan.append(dict(section=section, item=item, estimate_s=round(estimate_s, 2)))

    if "numerics" in sections:
        for name in FAMILIES:
            add("numerics", name, numerics_prior(s, gpu))
        add("numerics", "fp16_large_inputs", 2.0 + s.large_tokens * 1e-5)
    if "ops" in sections:
        for tokens in s.op_tokens:
            for precision in s.op_precisions:
                for op in OPS:
                    if op == "softmax_flash" and (not gpu or precision == "fp32"):
                        continue
                    add("ops", f"{op} N={tokens} {precision}",
                        estimate_op_job(rates, op, tokens, precision, s))
    if "models" in sections:
        for size in s.model_sizes:
            for pair in MODEL_PAIRS:
                for name in pair:
                    for precision in s.model_precisions:
                        for batch in s.model_batches:
                            add("models", f"{name} {size}px b{batch} {precision}",
                                estimate_model_job(rates, name, size, batch, precision,
                                                   "infer", s, job_budget_s=8.0))
    if "train" in sections:
        for precision in s.train_precisions:
            for size in s.train_sizes:
                for pair in s.train_pairs:
                    for name in pair:
                        add("train", f"{name} {size}px {precision}",
                            estimate_model_job(rates, name, size, 1, precision, "train", s,
                                               job_budget_s=8.0))
    if "mm" in sections:
        add("mm", "Mask R-CNN + UperNet steps, nms / RoIAlign", mm_prior(gpu))
    if "compile" in sections:
        for precision, size, batch in s.compile_rows:
            for pair in MODEL_PAIRS:
                for name in pair:
                    add("compile", f"{name} {size}px b{batch} {precision}",
                        estimate_model_job(rates, name, size, batch, precision, "infer", s,
                                           compiled=True, job_budget_s=8.0))
    if "tasks" in sections and mm_unavailable(torch.device("cpu")) is None:
        for job in task_plan_jobs(s, "cuda" if gpu else "cpu"):
            add("tasks", f"{job['label']} {job['size']}",
                estimate_task_job(rates, job, s, job_budget_s=8.0))
    return plan


def simulate_guard(plan: list[dict[str, Any]], budget_s: float, job_cap_s: float
                   ) -> list[dict[str, Any]]:
    """Mark what the budget guard would skip if every item took its estimate: the per-measurement
    cap (not for compile rows and the MM section) and the seconds left of the budget."""
    used = 0.0
    for p in plan:
        capped = p["section"] not in ("compile", "mm") and p["estimate_s"] > job_cap_s
        if capped:
            p["guard"] = "skipped: over the per-measurement cap"
        elif p["estimate_s"] > budget_s - used:
            p["guard"] = "skipped: over the budget left"
        else:
            p["guard"] = "runs"
            used += p["estimate_s"]
    return plan


# ---- numerics -----------------------------------------------------------------------------------

def _forward_backward(model: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor,
                      device: torch.device, precision: str
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    with _autocast(device, precision):
        out = model(x)
    loss = (out.float() * weight).sum()
    loss.backward()
    grads = {n: p.grad.detach() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.detach(), grads


def compare_family(name: str, size: int, batch: int, device: torch.device,
                   precisions: tuple[str, ...]) -> list[dict[str, Any]]:
    """One family's tiny variant: CPU fp32 reference against ``device`` in each precision."""
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=size, pretrained=False, drop_path_rate=0.0).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g)
    with torch.no_grad():
        weight = torch.randn(model(x[:1]).shape[1:], generator=g)
    ref_out, ref_dx, ref_grads = _forward_backward(model, x, weight, torch.device("cpu"), "fp32")
    ref_flat = torch.cat([g_.flatten() for g_ in ref_grads.values()])
    rows = []
    for precision in precisions:
        dev_model = copy.deepcopy(model).to(device)
        try:
            with _strict_fp32():
                out, dx, grads = _forward_backward(dev_model, x.to(device), weight.to(device),
                                                   device, precision)
        except Exception as e:  # noqa: BLE001  (e.g. fp16 autocast missing on some CPU builds)
            rows.append(dict(model=name, precision=precision, **_error(e)))
            continue
        per_param = {n: rel_err(grads[n], ref_grads[n]) for n in ref_grads
                     if n in grads and ref_grads[n].norm() > 1e-3 * ref_flat.norm() /
                     math.sqrt(len(ref_grads))}
        worst = max(per_param, key=per_param.get) if per_param else None
        flat = torch.cat([grads[n].flatten() for n in ref_grads if n in grads])
        row = dict(model=name, precision=precision, device=str(device), size=size, batch=batch,
                   status=OK,
                   output_rel_err=rel_err(out, ref_out), input_grad_rel_err=rel_err(dx, ref_dx),
                   param_grad_rel_err=rel_err(flat, ref_flat),
                   worst_param=worst, worst_param_rel_err=per_param.get(worst),
                   finite=bool(torch.isfinite(out).all() and torch.isfinite(dx).all()
                               and torch.isfinite(flat).all()))
        row["within_tolerance"] = row["finite"] and max(
            row["output_rel_err"], row["input_grad_rel_err"], row["param_grad_rel_err"]
        ) <= TOLERANCE[precision]
        row["tolerance"] = TOLERANCE[precision]
        rows.append(row)
        del dev_model
    return rows


def fp16_large_inputs(device: torch.device, tokens: int, scale: float = 32.0,
                      dim: int = 96, heads: int = 3) -> dict[str, Any]:
    """The linear-attention ops in fp16 (inputs and autocast) on inputs of magnitude ``scale``:
    an fp16 K^T V over N tokens overflows (shown by the naive product), the ops' fp32 reductions
    must not. Error against the same op on fp32 inputs."""
    side = math.isqrt(tokens)
    d = dim // heads
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, tokens, dim, generator=g) * scale for _ in range(3))
    kernels = torch.randn(1, dim, 3, 3, generator=g) * 0.1
    temperature = torch.full((heads, 1, 1), d ** -0.5)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(1, tokens, heads, d).transpose(1, 2)

    def merge(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(1, tokens, dim)

    ops: dict[str, Callable[..., torch.Tensor]] = {
        "inline_attention (local residual)":
            lambda q, k, v, kr, t: A.inline_attention(q, k, v, heads, kr, (side, side)),
        "injective_linear_attention":
            lambda q, k, v, kr, t: merge(A.injective_linear_attention(
                split(q), split(k), split(v), d ** -0.5)),
        "plain_linear_attention":
            lambda q, k, v, kr, t: merge(A.plain_linear_attention(
                F.relu(split(q)), F.relu(split(k)), split(v))),
        "l2vit_linear_attention":
            lambda q, k, v, kr, t: merge(A.l2vit_linear_attention(
                split(q), split(k), split(v), t)),
    }
    args32 = [t.to(device) for t in (q, k, v, kernels, temperature)]
    args16 = [t.half() for t in args32]
    rows = []
    for name, op in ops.items():
        try:
            with torch.no_grad():
                ref = op(*args32)
                with torch.autocast(device.type, dtype=torch.float16):
                    out = op(*args16)
            rows.append(dict(op=name, status=OK, dtype=str(out.dtype),
                             finite=bool(torch.isfinite(out).all()),
                             rel_err=rel_err(out, ref),
                             max_abs_output=float(ref.abs().max())))
        except Exception as e:  # noqa: BLE001
            rows.append(dict(op=name, **_error(e)))
    with torch.no_grad():
        naive = split(args16[1]).transpose(-2, -1) @ split(args16[2])
    return dict(tokens=tokens, scale=scale, device=str(device), ops=rows,
                naive_fp16_state_finite=bool(torch.isfinite(naive).all()),
                naive_fp16_state_max=float(naive.float().abs().max()))


# ---- ops ----------------------------------------------------------------------------------------

def time_op(op: str, tokens: int, precision: str, device: torch.device, s: Settings,
            budget_s: float, dim: int = 96, heads: int = 3) -> dict[str, Any]:
    """One op through benchmarks.measure.run_job; ``softmax_flash`` is SDPA restricted to the
    FlashAttention backend (an error record where the device or dtype has none)."""
    job = dict(kind="op", op="softmax" if op == "softmax_flash" else op, tokens=tokens,
               dim=dim, heads=heads, batch=1, precision=PRECISION_FLAG[precision],
               device=str(device), warmup=s.warmup, runs=s.runs, budget_s=budget_s)
    ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    if op == "softmax_flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx = sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    with ctx:
        rec = run_job(job)
    rec.update(op=op, precision=precision)
    return rec


# ---- MM -----------------------------------------------------------------------------------------

def mm_unavailable(device: torch.device) -> str | None:
    """Why the MM part cannot run here (None where it can): mmcv, mmdet, mmseg importable, and on
    a GPU mmcv's ops compiled with CUDA."""
    try:
        import mmdet  # noqa: F401
        import mmseg  # noqa: F401
        from mmcv.ops import get_compiling_cuda_version
    except Exception as e:  # noqa: BLE001
        return f"MM stack not importable ({type(e).__name__}: {e})"[:300]
    if device.type == "cuda" and not get_compiling_cuda_version()[:1].isdigit():
        return "mmcv's ops were compiled without CUDA (make setup on a GPU machine builds them)"
    return None


def _replace_syncbn(cfg: Any) -> Any:
    """SyncBN needs a process group; one process uses BN (as mmengine's Runner does)."""
    if isinstance(cfg, dict):
        if cfg.get("type") == "SyncBN":
            cfg["type"] = "BN"
        for v in cfg.values():
            _replace_syncbn(v)
    elif isinstance(cfg, list):
        for v in cfg:
            _replace_syncbn(v)
    return cfg


def _mm_train_steps(model: torch.nn.Module, make_batch: Callable[[], dict[str, Any]],
                    device: torch.device, precision: str, steps: int = 2) -> dict[str, Any]:
    """Preprocessor -> loss -> backward -> AdamW, as the Lightning modules' training_step; the
    last step is timed and its peak memory read."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    log: dict[str, float] = {}
    seconds = 0.0
    peak = None
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        data = model.data_preprocessor(make_batch(), True)
        opt.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            losses = model(**data, mode="loss")
        loss, log_vars = model.parse_losses(losses)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2 ** 20
        seconds = time.perf_counter() - t
        log = {k: float(torch.as_tensor(v).detach().float()) for k, v in log_vars.items()}
    finite = all(math.isfinite(v) for v in log.values())
    return dict(status=OK if finite else "non_finite", precision=precision, losses=log,
                step_s=seconds, peak_mem_mb=peak)


def mm_det_step(device: torch.device, size: int, batch: int, precision: str) -> dict[str, Any]:
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    path = ROOT / "configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py"
    cfg = Config.fromfile(str(path))
    init_default_scope("mmdet")
    cfg.model.backbone.img_size = size
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(device)
    classes = cfg.model.roi_head.bbox_head.num_classes

    def make_batch() -> dict[str, Any]:
        return demo_mm_inputs(batch_size=batch, image_shapes=(3, size, size),
                              num_items=[3] * batch, num_classes=classes, with_mask=True,
                              use_box_type=True, device=str(device))
    rec = _mm_train_steps(model, make_batch, device, precision)
    rec.update(config=str(path.relative_to(ROOT)), size=size, batch=batch)
    return rec


def mm_seg_step(device: torch.device, size: int, batch: int, precision: str) -> dict[str, Any]:
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    path = ROOT / "configs/_base_/models/upernet_fcn-aux.py"
    cfg = Config.fromfile(str(path))
    init_default_scope("mmseg")
    model_cfg = _replace_syncbn(cfg.model.to_dict())
    model_cfg["data_preprocessor"]["size"] = (size, size)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg).to(device)
    classes = model_cfg["decode_head"]["num_classes"]
    g = torch.Generator().manual_seed(4)

    def make_batch() -> dict[str, Any]:
        inputs, samples = [], []
        for _ in range(batch):
            inputs.append(torch.randint(0, 256, (3, size, size), generator=g,
                                        dtype=torch.uint8).to(device))
            sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                                 pad_shape=(size, size)))
            labels = torch.randint(0, classes, (1, size, size), generator=g)
            sample.gt_sem_seg = PixelData(data=labels.to(device))
            samples.append(sample)
        return dict(inputs=inputs, data_samples=samples)
    rec = _mm_train_steps(model, make_batch, device, precision)
    rec.update(config=str(path.relative_to(ROOT)), size=size, batch=batch)
    return rec


def mmcv_ops_cuda_vs_cpu(device: torch.device) -> dict[str, Any]:
    """mmcv's nms and RoIAlign (forward and input gradient) on CUDA against its CPU kernels."""
    from mmcv.ops import RoIAlign, get_compiling_cuda_version, nms

    g = torch.Generator().manual_seed(5)
    xy = torch.rand(2000, 2, generator=g) * 400
    wh = torch.rand(2000, 2, generator=g) * 80 + 4
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(2000, generator=g)
    _, keep_cpu = nms(boxes, scores, 0.5)
    _, keep_gpu = nms(boxes.to(device), scores.to(device), 0.5)
    feats = torch.randn(2, 32, 64, 64, generator=g)
    starts = torch.rand(300, 2, generator=g) * 50
    rois = torch.cat([torch.randint(0, 2, (300, 1), generator=g).float(), starts,
                      starts + torch.rand(300, 2, generator=g) * 14 + 1], dim=1)
    out = {}
    for aligned in (True, False):
        layer = RoIAlign((7, 7), 1.0, sampling_ratio=2, aligned=aligned)
        grads = []
        results = []
        for dev in (torch.device("cpu"), device):
            f = feats.to(dev).requires_grad_(True)
            r = layer(f, rois.to(dev))
            r.backward(torch.ones_like(r))
            results.append(r.detach())
            grads.append(f.grad.detach())
        out[f"roi_align_aligned_{aligned}"] = dict(
            forward_rel_err=rel_err(results[1], results[0]),
            input_grad_rel_err=rel_err(grads[1], grads[0]))
    return dict(status=OK, compiled_cuda=get_compiling_cuda_version(),
                nms_boxes=len(boxes), nms_kept_cpu=len(keep_cpu), nms_kept_cuda=len(keep_gpu),
                nms_same_indices=bool(torch.equal(keep_cpu, keep_gpu.cpu())), **out)


# ---- summary and plots --------------------------------------------------------------------------

def summarise(report: dict[str, Any]) -> dict[str, Any]:
    sections = report["sections"]
    num = [r for r in sections.get("numerics", []) if r.get("status") == OK]
    large = sections.get("fp16_large_inputs") or {}
    by_status: dict[str, dict[str, int]] = {}
    for name in ("ops", "models", "train", "compile"):
        counts: dict[str, int] = {}
        for rec in sections.get(name, []):
            counts[rec.get("status", "?")] = counts.get(rec.get("status", "?"), 0) + 1
        by_status[name] = counts
    return dict(
        numerics_rows=len(num),
        numerics_all_within_tolerance=bool(num) and all(r["within_tolerance"] for r in num),
        numerics_outside_tolerance=[f"{r['model']} {r['precision']}" for r in num
                                    if not r["within_tolerance"]],
        fp16_large_inputs_all_finite=bool(large.get("ops")) and all(
            r.get("finite") for r in large.get("ops", [])),
        status_counts=by_status,
        skipped=len(report["skipped"]),
    )


def make_plots(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """numerics.png, ops.png, models.png; a note instead where matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        return dict(skipped=f"matplotlib not importable ({type(e).__name__}); no plots")
    sections = report["sections"]
    device = report["meta"].get("gpu") or report["meta"]["device"]
    written = []

    rows = [r for r in sections.get("numerics", []) if r.get("status") == OK]
    if rows:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
        names = list(dict.fromkeys(r["model"] for r in rows))
        precs = list(dict.fromkeys(r["precision"] for r in rows))
        for ax, key in zip(axes, ("output_rel_err", "input_grad_rel_err", "param_grad_rel_err"),
                           strict=True):
            for j, p in enumerate(precs):
                vals = [next((max(r[key], 1e-12) for r in rows
                              if r["model"] == n and r["precision"] == p), math.nan)
                        for n in names]
                offset = 0.27 * (j - (len(precs) - 1) / 2)
                ax.bar([i + offset for i in range(len(names))], vals, width=0.27, label=p)
            ax.set_yscale("log")
            ax.set_xticks(range(len(names)), [n.replace("_tiny", "") for n in names],
                          rotation=30)
            ax.set_title(key.replace("_", " "))
        axes[0].set_ylabel("relative error vs CPU fp32")
        axes[0].legend()
        fig.suptitle(f"numerics on {device}")
        fig.tight_layout()
        fig.savefig(out / "numerics.png", dpi=90)
        plt.close(fig)
        written.append("numerics.png")

    ops = [r for r in sections.get("ops", []) if r.get("status") == OK]
    if ops:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for key in dict.fromkeys((r["op"], r["precision"]) for r in ops):
            pts = sorted((r["tokens"], r["latency_ms"], r["bandwidth_fraction"]) for r in ops
                         if (r["op"], r["precision"]) == key)
            label = f"{key[0]} {key[1]}"
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
            ax2.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=label)
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens N (C = 96, 3 heads, batch 1)")
        ax1.set_ylabel("ms per call")
        ax2.set_ylabel("achieved / copy bandwidth")
        ax1.legend(fontsize=7)
        fig.suptitle(f"attention ops on {device}")
        fig.tight_layout()
        fig.savefig(out / "ops.png", dpi=90)
        plt.close(fig)
        written.append("ops.png")

    models = [r for sec in ("models", "compile") for r in sections.get(sec, [])
              if r.get("status") == OK]
    if models:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for key in dict.fromkeys((r["model"], r["precision"], r["batch"], r.get("compile"))
                                 for r in models):
            pts = sorted((r["size"], r["images_per_s"], r.get("peak_mem_mb") or math.nan)
                         for r in models
                         if (r["model"], r["precision"], r["batch"], r.get("compile")) == key)
            label = f"{key[0]} {key[1]} b{key[2]}{' compiled' if key[3] else ''}"
            style = "s--" if key[3] else "o-"
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
            ax2.plot([p[0] for p in pts], [p[2] for p in pts], style, label=label)
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("image side (px)")
        ax1.set_ylabel("images / s")
        ax2.set_ylabel("peak memory (MB)")
        ax1.legend(fontsize=6)
        fig.suptitle(f"inference on {device}")
        fig.tight_layout()
        fig.savefig(out / "models.png", dpi=90)
        plt.close(fig)
        written.append("models.png")
    return dict(written=written)


# ---- entry --------------------------------------------------------------------------------------

SECTIONS = ("numerics", "ops", "models", "train", "mm", "compile", "tasks")
STARTUP_S = 15.0  # before the budget's clock starts: interpreter, torch + timm imports
GRACE_S = 30.0  # past the budget, an item still running is stopped (see Check.run)


def print_plan(args: argparse.Namespace) -> None:
    """The plan and its estimate without running it: on this device's calibration, or on the
    nominal rates of ``--assume``."""
    settings = SMOKE if args.smoke else FULL
    if args.assume:
        cal = ASSUMED[args.assume]
        rates = rates_from(cal, gpu=True)
        device = cal["name"]
    else:
        device_t = torch.device(args.device)
        cal = machine_reference(device_t, mb=64)
        cal.update(matmul_bf16_gflop_s=cal["matmul_gflop_s"],
                   cpu_matmul_gflop_s=cal["matmul_gflop_s"])
        rates = rates_from(cal, gpu=device_t.type == "cuda")
        device = cal["device"]
    plan = simulate_guard(build_plan(rates, settings, rates.gpu, args.sections), args.budget_s,
                          settings.job_cap_s)
    startup = STARTUP_S
    per_section: dict[str, float] = {}
    for p in plan:
        per_section[p["section"]] = per_section.get(p["section"], 0.0) + p["estimate_s"]
    runs = [p for p in plan if p["guard"] == "runs"]
    summary = dict(device=device, mode="smoke" if args.smoke else "full", items=len(plan),
                   startup_s=startup, budget_s=args.budget_s, grace_s=GRACE_S,
                   per_section_s={k: round(v, 1) for k, v in per_section.items()},
                   estimate_everything_s=round(sum(per_section.values()), 1),
                   items_run=len(runs),
                   estimate_run_s=round(sum(p["estimate_s"] for p in runs), 1),
                   expected_wall_s=round(startup + sum(p["estimate_s"] for p in runs), 1),
                   worst_case_wall_s=startup + args.budget_s + GRACE_S,
                   skipped_by_guard=[f"{p['section']}: {p['item']} ({p['guard']})"
                                     for p in plan if p["guard"] != "runs"],
                   plan=plan)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check_plan.json").write_text(json.dumps(summary, indent=1))
    for p in plan:
        print(f"  {p['section']:9s} {p['item']:48s} {p['estimate_s']:7.2f} s  {p['guard']}")
    print(json.dumps({k: v for k, v in summary.items() if k != "plan"}, indent=1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for gpu_check.json and the plots")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (CPU: seconds); the same code paths")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the measurements (default 420; smoke 45)")
    parser.add_argument("--device", default=None,
                        help="cuda or cpu (default: cuda where available)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--plan", action="store_true",
                        help="print the plan and its time estimate, run nothing")
    parser.add_argument("--assume", choices=sorted(ASSUMED),
                        help="with --plan: estimate for this device's nominal rates")
    args = parser.parse_args(argv)
    args.sections = tuple(s for s in args.sections.split(",") if s)
    bad = set(args.sections) - set(SECTIONS)
    if bad:
        parser.error(f"unknown section(s) {sorted(bad)}; choose from {','.join(SECTIONS)}")
    if args.budget_s is None:
        args.budget_s = 45.0 if args.smoke else 420.0
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device; use --smoke --device cpu")
    if not args.plan and not args.out:
        parser.error("--out is required")
    if args.device == "cpu" and not args.smoke and not args.plan:
        parser.error("the full check is for a GPU; on CPU use --smoke (or tools/benchmark.py)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plan:
        print_plan(args)
        return
    torch.manual_seed(0)
    Check(args).run()


if __name__ == "__main__":
    main()
