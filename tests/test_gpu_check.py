"""tools/gpu_check.py: the smoke mode on CPU (the whole script, as a subprocess run from outside the
tree), the budget guard and watchdog, and the full mode's plan for one H100 fitting 8 minutes."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_smoke_run_on_cpu_writes_json_and_plots(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.perf_counter()
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    wall = time.perf_counter() - t
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    meta = report["meta"]
    assert meta["smoke"] and meta["device"] == "cpu" and meta["torch"]
    # the budget guard bounds the run: budget + grace, plus the imports before its clock
    assert meta["elapsed_s"] <= meta["budget_s"] + gpu_check.GRACE_S
    assert wall < meta["budget_s"] + gpu_check.GRACE_S + 60
    assert report["calibration"]["bandwidth_gb_s"] > 0
    assert report["plan"] and report["plan_estimate_s"] > 0
    skipped = {(s["section"], s["item"]) for s in report["skipped"]}
    assert all(s["reason"] for s in report["skipped"])
    sections = report["sections"]

    # numerics: every family either compared or skipped with a reason; bf16 autocast really ran
    # (not equal to fp32) and agrees within its tolerance
    rows = {r["model"]: r for r in sections["numerics"]}
    for name in gpu_check.FAMILIES:
        assert name in rows or ("numerics", name) in skipped
    assert "inline_deit_tiny" in rows  # the first item always fits the budget
    for r in rows.values():
        assert r["status"] == "ok" and r["precision"] == "bf16" and r["finite"]
        for key in ("output_rel_err", "input_grad_rel_err", "param_grad_rel_err"):
            assert 1e-6 < r[key] < gpu_check.TOLERANCE["bf16"], (r["model"], key, r[key])
        assert r["within_tolerance"]

    # fp16 on inputs whose fp16 K^T V overflows: the project's ops stay finite and accurate
    large = sections.get("fp16_large_inputs")
    if large is not None:
        assert large["naive_fp16_state_finite"] is False
        assert len(large["ops"]) == 4
        for r in large["ops"]:
            assert r["status"] == "ok" and r["finite"] and r["rel_err"] < 1e-2, r
            assert r["dtype"] == "torch.float16"

    for r in sections.get("ops", []):
        assert r["status"] == "ok", r
        assert r["latency_ms"] > 0 and r["gb_s"] > 0 and 0 < r["bandwidth_fraction"]
        assert r["gflop_s"] > 0 and r["op"] in gpu_check.OPS
    for name in ("models", "train"):
        for r in sections.get(name, []):
            assert r["status"] == "ok", r
            assert r["images_per_s"] > 0 and r["estimate_s"] > 0
    assert sections.get("ops") or any(s == "ops" for s, _ in skipped)
    assert any(r["mode"] == "infer" for r in sections.get("models", [])) or \
        any(s == "models" for s, _ in skipped)

    mm = sections.get("mm")
    if mm is not None:  # the MM stack is importable here: the steps ran in fp32 on CPU
        for task in ("mask_rcnn_step_fp32", "upernet_step_fp32"):
            assert mm[task]["status"] == "ok", mm[task]
            assert mm[task]["losses"] and mm[task]["step_s"] > 0
    else:
        assert any(s == "mm" for s, _ in skipped)

    assert report["summary"]["numerics_rows"] == len(rows)
    if _has("matplotlib"):
        for png in report["plots"]["written"]:
            assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "numerics.png" in report["plots"]["written"]
    else:
        assert "matplotlib" in report["plots"]["skipped"]


def test_budget_guard_skips_with_reasons(tmp_path):
    """No budget: the items are skipped, each with its estimate and the reason, nothing runs."""
    gpu_check.main(["--smoke", "--device", "cpu", "--budget-s", "0", "--sections",
                    "numerics,ops", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["sections"]["numerics"] == [] and report["sections"]["ops"] == []
    items = {(s["section"], s["item"]) for s in report["skipped"]}
    assert {("numerics", f) for f in gpu_check.FAMILIES} <= items
    assert ("ops", "softmax N=4096 fp32") in items
    assert all("left of --budget-s" in s["reason"] and s["estimate_s"] > 0
               for s in report["skipped"])
    assert "models" not in report["sections"]  # sections not asked for are not run


def test_watchdog_stops_an_item_past_budget_and_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "GRACE_S", 0.5)
    monkeypatch.setattr(gpu_check.Check, "numerics", lambda self: time.sleep(30))
    args = gpu_check.parse_args(["--smoke", "--device", "cpu", "--budget-s", "0.5",
                                 "--sections", "numerics", "--out", str(tmp_path)])
    t = time.perf_counter()
    gpu_check.Check(args).run()
    assert time.perf_counter() - t < 15
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["stopped"]["section"] == "numerics"
    assert "grace" in report["stopped"]["reason"]


def test_full_plan_for_one_h100_fits_eight_minutes():
    """The acceptance bound, by the script's own estimates on an H100's nominal rates: what the
    guard lets run, plus start-up, fits 8 minutes, and so does the worst case (budget + grace)."""
    args = gpu_check.parse_args(["--plan", "--assume", "h100"])
    rates = gpu_check.rates_from(gpu_check.ASSUMED["h100"], gpu=True)
    plan = gpu_check.simulate_guard(
        gpu_check.build_plan(rates, gpu_check.FULL, True, args.sections), args.budget_s,
        gpu_check.FULL.job_cap_s)
    run = [p for p in plan if p["guard"] == "runs"]
    expected = gpu_check.STARTUP_S + sum(p["estimate_s"] for p in run)
    assert args.budget_s == 420
    assert expected <= 8 * 60
    assert gpu_check.STARTUP_S + args.budget_s + gpu_check.GRACE_S <= 8 * 60
    sections = {p["section"] for p in run}
    assert {"numerics", "ops", "models", "train", "mm", "compile"} <= sections
    # every size and both batches of the model comparison are planned; 4096 b8 fp32 DeiT-T
    # (softmax over 65536 tokens in fp32) is the one row the per-measurement cap refuses
    sizes = {int(p["item"].split()[1][:-2]) for p in plan if p["section"] == "models"}
    assert sizes == {512, 1024, 2048, 4096}
    assert all(p["section"] != "models" or p["guard"] == "runs" or "4096px" in p["item"]
               for p in plan)


def test_rel_err_and_refusals():
    import torch

    a = torch.tensor([1.0, 2.0])
    assert gpu_check.rel_err(a, a) == 0
    assert gpu_check.rel_err(torch.tensor([1.0, float("inf")]), a) == float("inf")
    budget = gpu_check.Budget(10, job_cap_s=5)
    assert budget.refuse(1) is None
    assert "per-measurement cap" in budget.refuse(6)
    assert budget.refuse(6, cap=False) is None
    assert "left of --budget-s" in budget.refuse(11, cap=False)


@pytest.mark.parametrize("argv", [["--smoke"], ["--device", "cpu", "--out", "x"]])
def test_arguments_refused(argv, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(argv)


def test_tasks_section_plan_and_budget_guard(tmp_path):
    """The whole-model modes (benchmarks.task) in the plan, the pairs kept whole; no budget: each
    job is skipped with its reason, nothing is built."""
    if not (_has("mmdet") and _has("mmseg")):
        pytest.skip("MM stack not installed")
    rates = gpu_check.rates_from(gpu_check.ASSUMED["h100"], gpu=True)
    plan = gpu_check.build_plan(rates, gpu_check.FULL, True, ("tasks",))
    items = [p["item"] for p in plan]
    assert len(items) == 3 * 4 + 3 + 2 * 2 * 2  # seg whole x4 sizes, slide at 1024x2048, det
    assert "UperNet Swin-T (mmseg) slide 1024x2048" in items
    assert "Mask R-CNN InLine-Swin-T train 1600x2666" in items
    assert all(p["estimate_s"] > 3 for p in plan)
    gpu_check.main(["--smoke", "--device", "cpu", "--budget-s", "0", "--sections", "tasks",
                    "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["sections"]["tasks"] == [] and report["sections"]["tasks_pairs"] == []
    skipped = [s for s in report["skipped"] if s["section"] == "tasks"]
    assert len(skipped) == 3 + 2 and all(s["reason"] for s in skipped)
