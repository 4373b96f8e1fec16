"""tools/benchmark.py (the benchmarks package) works: records with every field, the guards, the
plot (no timing checks)."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from backbones import attention as A
from benchmarks import cli, measure, suite
from benchmarks import workloads as W
from benchmarks.flops import count_flops

ROOT = Path(__file__).resolve().parents[2]
TINY = "(1,1,1,1)"
MODELS = [f"inline_swin_tiny:embed_dim=16,depths={TINY},num_heads={TINY}",
          f"swin_tiny_patch4_window7_224:embed_dim=16,depths={TINY},num_heads={TINY}"]
MODEL_FIELDS = {"model", "kwargs", "label", "size", "pixels", "mode", "batch", "precision",
                "status", "images_per_s", "images_per_s_cpu", "latency_ms", "cpu_time_ms",
                "runs", "runs_ms", "peak_mem_mb", "mem_kind", "gflops", "params_m", "device",
                "sys_time_ms", "page_faults",
                "threads"}


def run_tool(*argv):
    """tools/benchmark.py as a user runs it (its __main__), in this process."""
    old = sys.argv
    sys.argv = ["tools/benchmark.py", *argv]
    try:
        runpy.run_path(str(ROOT / "tools" / "benchmark.py"), run_name="__main__")
    finally:
        sys.argv = old


def test_tool_two_tiny_models_two_sizes(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    run_tool("--models", *MODELS, "--sizes", "96", "64", "--runs", "2", "--no-isolate",
             "--out", str(out), "--plot", str(png))
    data = json.loads(out.read_text())
    assert data["meta"]["command"].startswith("tools/benchmark.py --models")
    recs = data["records"]
    assert [(r["size"], r["model"]) for r in recs] == [  # sizes ascending, models interleaved
        (64, "inline_swin_tiny"), (64, "swin_tiny_patch4_window7_224"),
        (96, "inline_swin_tiny"), (96, "swin_tiny_patch4_window7_224")]
    for r in recs:
        assert r["status"] == "ok" and MODEL_FIELDS <= r.keys()
        assert r["kwargs"] == {"embed_dim": 16, "depths": [1, 1, 1, 1],
                               "num_heads": [1, 1, 1, 1]}
        assert r["runs"] == 2 and len(r["runs_ms"]) == 2 and r["pixels"] == r["size"] ** 2
        assert r["images_per_s"] == pytest.approx(1e3 / r["latency_ms"])
        assert r["mem_kind"] == "cpu_rss_growth" and r["peak_mem_mb"] >= 0
    # FLOPs against the family's own counter on real tensors; they grow with pixels.
    model = W.build_model(W.parse_model_spec(MODELS[0]), 96)
    assert recs[2]["gflops"] == pytest.approx(count_flops(model, (96, 96)) / 1e9, rel=1e-3)
    assert recs[2]["gflops"] > 1.5 * recs[0]["gflops"]
    assert png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| inline_swin_tiny:embed_dim=16" in printed and "time ratio / pixel ratio" in printed
    # Tables and plots again from the saved records, measuring nothing.
    run_tool("--from-json", str(out), "--plot", str(tmp_path / "again.png"))
    assert capsys.readouterr().out.strip().startswith("| model | size |")
    assert (tmp_path / "again.png").stat().st_size > 10_000


def test_isolated_train_job_and_budgets(tmp_path):
    """Through the worker subprocess (train mode, bf16 autocast); then the guards: a job over
    the time limit is killed, predicted-too-slow and predicted-out-of-memory jobs do not run."""
    spec = W.parse_model_spec(MODELS[0])
    jobs = suite.model_jobs([spec], [64], mode="train", precision="bf16-mixed", runs=1,
                        grad_checkpointing=True, malloc="keep")
    (rec,) = suite.run_suite(jobs, budget_s=60)
    assert rec["status"] == "ok", rec.get("reason")
    assert rec["mode"] == "train" and rec["peak_mem_mb"] > 0 and rec["latency_ms"] > 0
    assert rec["glibc_tunables"] == suite.MALLOC["keep"] and rec["page_faults"] >= 0

    (killed,) = suite.run_suite(jobs, budget_s=0.01, startup_s=0.2)
    assert killed["status"] == "too_slow" and "killed after" in killed["reason"]

    jobs = suite.model_jobs([spec], [64, 512], runs=1)
    small, big = suite.run_suite(jobs, budget_s=1e-3, isolate=False)
    assert small["status"] == "ok"
    assert big["status"] == "too_slow" and big["estimate_s"] > 1e-3 and "budget" in big["reason"]
    # Predictions scale time by FLOPs and memory by pixels.
    prev = dict(small, latency_ms=1000.0, peak_mem_mb=100.0)
    job = dict(big, warmup=1)
    slow = suite.guard(prev, job, budget_s=10, mem_budget_mb=None)
    assert slow["estimate_s"] == pytest.approx(2 * big["gflops"] / small["gflops"], rel=1e-2)
    oom = suite.guard(prev, job, budget_s=1e6, mem_budget_mb=1000)
    assert oom["status"] == "out_of_memory" and oom["estimate_mb"] == 6400
    assert suite.guard(prev, job, budget_s=1e6, mem_budget_mb=1e5) is None


def test_oom_in_the_worker_is_a_record(monkeypatch):
    def boom(job, device):
        raise RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(measure, "_model_job", boom)
    job = suite.model_jobs([W.parse_model_spec(MODELS[0])], [64])[0]
    rec = measure.run_job(dict(job, budget_s=1))
    assert rec["status"] == "out_of_memory" and "allocate" in rec["reason"]


def test_op_mode(tmp_path):
    out = tmp_path / "ops.json"
    run_tool("--op", "inline", "softmax", "window", "--tokens", "256", "64", "--dim", "32",
             "--heads", "2", "--runs", "1", "--no-isolate", "--out", str(out))
    recs = json.loads(out.read_text())["records"]
    machine, ops = recs[0], recs[1:]
    assert machine["kind"] == "machine" and machine["bandwidth_gb_s"] > 0
    assert [(r["tokens"], r["op"]) for r in ops] == [
        (64, "inline"), (64, "softmax"), (64, "window"),
        (256, "inline"), (256, "softmax"), (256, "window")]
    for r in ops:
        assert r["status"] == "ok" and r["io_bytes"] == 16 * r["tokens"] * 32
        assert r["x_bandwidth"] > 0 and r["x_compute"] > 0 and r["calls_per_s"] > 0
    inline, softmax = ops[3], ops[4]
    assert softmax["gflops"] == pytest.approx(2 * 256 * 256 * 32 / 1e9)  # QK^T and AV
    assert inline["gflops"] < softmax["gflops"]


@pytest.mark.parametrize("op", W.OPS)
def test_ops_compute_attention(op):
    """Each timed op is the attention it names (against the kernels the models use)."""
    torch.manual_seed(0)
    b, n, c, h, hw = 2, 49, 16, 2, (7, 7)
    qkv = torch.randn(b, n, 3 * c)
    out = W.make_op(op, h, hw, b, c, torch.device("cpu"))(qkv)
    assert out.shape == (b, n, c)
    q, k, v = qkv.view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    if op in ("softmax", "window"):  # one 7 x 7 window is the whole map here
        ref = torch.softmax(q @ k.transpose(-2, -1) * (c // h) ** -0.5, -1) @ v
        torch.testing.assert_close(out, W._merge(ref), atol=1e-5, rtol=1e-4)
    elif op == "linear":
        torch.testing.assert_close(out, W._merge(A.plain_linear_attention(q.relu(), k.relu(), v)))
    elif op == "inline":  # the fused op equals the unfused form (same random 3x3 kernels)
        torch.manual_seed(1)
        fused = W.make_op(op, h, hw, b, c, torch.device("cpu"))(qkv)
        torch.manual_seed(1)
        unfused = W.make_op("inline_unfused", h, hw, b, c, torch.device("cpu"))(qkv)
        torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-4)


def test_bad_arguments_name_the_fix(capsys):
    with pytest.raises(ValueError, match="unknown timm model 'nope'"):
        W.parse_model_spec("nope")
    with pytest.raises(ValueError, match="not key=value"):
        W.parse_model_spec("inline_swin_tiny:depths")
    with pytest.raises(ValueError, match="not a square"):
        suite.op_jobs(["inline"], [1000])
    for argv, msg in ((["--sizes", "64"], "give --models"),
                      (["--models", "inline_swin_tiny", "--op"], "separate call"),
                      (["--mode", "det-step"], "needs --config"),
                      (["--models", "inline_swin_tiny", "--batch", "0"], "--batch"),
                      (["--models", "inline_swin_tiny", "--malloc", "keep", "--no-isolate"],
                       "isolated")):
        with pytest.raises(SystemExit):
            run_tool(*argv)
        assert msg in capsys.readouterr().err
    assert W.parse_model_spec("inline_swin_tiny:attn_types=SSSS,global_softmax=True").kwargs == \
        {"attn_types": "SSSS", "global_softmax": True}


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_suite_script_commands_are_valid(device, tmp_path, monkeypatch):
    """tools/benchmark_suite.sh (make benchmark) hands the tool command lines it accepts: each
    step's arguments parse, pass the tool's checks and name known models, and every target's
    step is there (recorded with a stand-in interpreter: nothing runs)."""
    log = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" >> {log}\nprintf "\\n\\0" >> {log}\n')
    fake.chmod(0o755)
    done = subprocess.run(["bash", "tools/benchmark_suite.sh", device, str(tmp_path / "out")],
                          cwd=ROOT, env={"PY": str(fake), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [c.strip("\0").split("\0") for c in log.read_text().split("\n\0") if c.strip("\0")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine's view
    outs, models = set(), set()
    for argv in calls:
        assert argv[0] == "tools/benchmark.py"
        ap = cli.build_parser()
        args = ap.parse_args(argv[1:])
        cli.check_args(ap, args)
        assert args.device == device
        models |= {W.parse_model_spec(spec).name for spec in args.models}
        outs.add(Path(args.out).name)
    precisions = ["32", "bf16-mixed", "16-mixed"] if device == "cuda" else ["32"]
    expected = {f"{device}_{s}.json" for s in ["infer_families_32", "train_swin_32",
                                               "train_swin_gradckpt_32", "infer_swin_compiled_32",
                                               "det_step"]}
    expected |= {f"{device}_{kind}_{p}.json" for kind in ("infer_swin", "ops") for p in precisions}
    assert outs == expected
    assert set(timm.list_models("inline_*") + timm.list_models("l2vit_*")) <= models
