"""The whole-model modes of tools/benchmark.py (benchmarks.task): comparison configs that differ
from the project's only in the backbone, records with the profile split for UperNet (whole and
sliding window) and Mask R-CNN (inference and a training step), the guards, tables and plots."""

import json
import runpy
from pathlib import Path

import pytest
from mmengine.config import Config

from benchmarks import cli, suite, task
from benchmarks.task_report import crossovers, pair_rows, pair_table, plot_pairs

ROOT = Path(__file__).resolve().parents[2]
# Fewer proposals and detections: the RoI heads' fixed cost would dominate a 64-pixel test.
SMALL_DET = {"model.test_cfg.rpn.max_per_img": 50, "model.test_cfg.rcnn.max_per_img": 5,
             "model.train_cfg.rcnn.sampler.num": 32}


def _model_dict(name: str) -> dict:
    return Config.fromfile(str(ROOT / task.TASK_MODELS[name][1])).to_dict()


@pytest.mark.parametrize("project, comparison", [p for ps in task.PAIRS.values() for p in ps])
def test_comparison_configs_differ_only_in_the_backbone(project, comparison):
    a, b = _model_dict(project), _model_dict(comparison)
    backbone_a, backbone_b = a["model"].pop("backbone"), b["model"].pop("backbone")
    # `pretrained`: the project backbone's weight file, read only by its init_cfg
    assert backbone_a["init_cfg"]["checkpoint"] == a.pop("pretrained")
    b.pop("pretrained")
    assert backbone_b["init_cfg"] is None
    assert a == b  # heads, neck, test settings, data, schedule, runtime: all inherited
    assert backbone_a["type"] != "SwinTransformer"
    # Swin-T in the toolboxes' own implementation, same stage widths as the project's backbone
    assert backbone_b["type"] == "SwinTransformer"
    assert (backbone_b["embed_dims"], list(backbone_b["depths"]), list(backbone_b["num_heads"]),
            backbone_b["window_size"]) == (96, [2, 2, 6, 2], [3, 6, 12, 24], 7)
    assert backbone_b["drop_path_rate"] == backbone_a["drop_path_rate"]
    assert tuple(backbone_b["out_indices"]) == tuple(backbone_a["out_indices"]) == (0, 1, 2, 3)


def test_shapes_and_slide_windows():
    assert task.parse_shape(1024) == (1024, 1024)
    assert task.parse_shape("1024x2048") == (1024, 2048)
    with pytest.raises(ValueError, match="HxW"):
        task.parse_shape("1024by2048")
    # crops of 512 every 341 pixels, the last one flush with the border: 1 / 3 / 6 per side
    assert task.slide_windows((512, 512), (512, 512), (341, 341)) == 1
    assert task.slide_windows((1024, 2048), (512, 512), (341, 341)) == 3 * 6
    assert task.slide_windows((2048, 2048), (512, 512), (341, 341)) == 36


def test_jobs_interleave_models_and_order_by_pixels():
    jobs = task.task_jobs(["upernet_inline-swin-t", "upernet_swin-t"], ["1024x2048", 512],
                          ["whole", "slide"], slide_sizes=["1024x2048"], warmup=0, runs=1)
    assert [(j["size"], j["phase"], j["model"]) for j in jobs] == [
        ("512", "whole", "upernet_inline-swin-t"), ("512", "whole", "upernet_swin-t"),
        ("1024x2048", "whole", "upernet_inline-swin-t"), ("1024x2048", "whole", "upernet_swin-t"),
        ("1024x2048", "slide", "upernet_inline-swin-t"), ("1024x2048", "slide", "upernet_swin-t")]
    assert jobs[4]["work"] == 18 * 512 * 512 and jobs[2]["work"] == 1024 * 2048
    with pytest.raises(ValueError, match="mix tasks"):
        task.task_jobs(["upernet_swin-t", "mask-rcnn_swin-t"], [512], ["whole"])


def _check_split(r: dict, parts: set) -> None:
    assert r["status"] == "ok", r.get("reason")
    assert set(r["parts_cpu_ms"]) == parts | {"other"} == set(r["parts_ms"])
    assert all(v >= 0 for v in r["parts_cpu_ms"].values())
    assert all(r["parts_cpu_ms"][p] > 0 for p in parts)
    # the parts are measured inside the timed iteration: they add up to about its time
    assert sum(r["parts_cpu_ms"].values()) == pytest.approx(r["cpu_time_ms"], rel=0.1)
    assert r["peak_mem_mb"] is not None and r["params_m"] > r["backbone_params_m"] > 0


def test_seg_records_with_profile_split(tmp_path):
    jobs = task.task_jobs(["upernet_inline-swin-t", "upernet_swin-t"], [64], ["whole", "slide"],
                          slide_sizes=["64x96"], warmup=0, runs=1, threads=1)
    for j in jobs:  # crops smaller than the image: 2 windows across 96 pixels
        if j["phase"] == "slide":
            j["cfg_options"] = {"model.test_cfg": dict(mode="slide", crop_size=(64, 64),
                                                       stride=(32, 32))}
    recs = suite.run_suite(jobs, budget_s=60, isolate=False)
    for r in recs:
        _check_split(r, {"backbone", "decode_head"})
    slide = [r for r in recs if r["phase"] == "slide"]
    assert [r["windows"] for r in slide] == [2, 2]
    rows = pair_rows(recs)
    assert {(r["phase"], r["size"]) for r in rows} == {("whole", "64"), ("slide", "64x96")}
    for r in rows:
        assert r["speedup"] == pytest.approx(r["b_ms"] / r["a_ms"])
        assert r["backbone_speedup"] == pytest.approx(r["b_backbone_ms"] / r["a_backbone_ms"])
    table = pair_table(recs)
    assert "UperNet InLine-Swin-T vs UperNet Swin-T (mmseg) | whole | 64 |" in table
    assert "crossover UperNet InLine-Swin-T vs UperNet Swin-T (mmseg) (whole)" in table
    assert [Path(p).name for p in plot_pairs(recs, tmp_path / "seg.png")] == [
        "seg_upernet_inline-swin-t_vs_upernet_swin-t.png",
        "seg_upernet_inline-swin-t_vs_upernet_swin-t_parts.png"]  # the l2vit pair has one side
    assert (tmp_path / "seg_upernet_inline-swin-t_vs_upernet_swin-t_parts.png").read_bytes()[
        :4] == b"\x89PNG"


def test_det_inference_and_training_step_records(tmp_path):
    jobs = task.task_jobs(["mask-rcnn_inline-swin-t", "mask-rcnn_swin-t"], ["64x96"],
                          ["infer", "train"], warmup=0, runs=1, threads=1)
    for j in jobs:
        j["cfg_options"] = SMALL_DET
    recs = suite.run_suite(jobs, budget_s=60, isolate=False)
    assert [r["phase"] for r in recs] == ["infer", "infer", "train", "train"]
    for r in recs[:2]:
        _check_split(r, {"backbone", "neck", "rpn_head", "roi_head"})
        # the biased box classifier lets max_per_img boxes through to the mask head
        assert r["detections"] == 5
    for r in recs[2:]:
        _check_split(r, {"backbone", "neck", "rpn_head", "roi_head", "backward", "optimizer"})
    assert {r["size"] for r in pair_rows(recs)} == {"64x96"}


def test_part_clock_accumulates_and_leaves_the_rest_as_other():
    import torch

    clock = task.PartClock(torch.device("cpu"))

    class Box:
        def work(self, n):
            return sum(range(n))

    box = Box()
    clock.wrap(box, "work", "work")
    assert box.work(10) == 45  # outside an iteration: called, not recorded
    for _ in range(3):
        with clock.iteration():
            box.work(200_000)
            box.work(200_000)
            sum(range(100_000))
    assert len(clock.iterations) == 3
    med = clock.medians(1, 2)
    assert set(med["parts_cpu_ms"]) == {"work", "other"}
    # two calls of the part against one half-size loop outside it
    assert med["parts_cpu_ms"]["work"] > 2 * med["parts_cpu_ms"]["other"]


def test_long_job_rule_and_work_prediction(monkeypatch):
    ran = []

    def fake_run_job(job):
        ran.append(dict(job))
        # 1 s per million pixels of work
        return dict(job, status="ok", latency_ms=job["work"] / 1e3, peak_mem_mb=10.0)

    monkeypatch.setattr(suite, "run_job", fake_run_job)
    jobs = task.task_jobs(["upernet_swin-t"], [512, 1024, 2048], ["whole", "slide"],
                          slide_sizes=[1024, 2048], warmup=1, runs=3)
    recs = suite.run_suite(jobs, budget_s=20, isolate=False, long_job_s=2.0)
    by = {(r["phase"], r["size"]): r for r in recs}
    assert by[("whole", "512")]["warmup"] == 1 and "reduced" not in by[("whole", "512")]
    # 1024 whole: predicted 1.05 s from 512 by pixels: as asked
    assert ran[1]["warmup"] == 1 and ran[1]["runs"] == 3
    # slide at 1024 (9 crops of 512): predicted from the whole model at 1024 by work, 2.4 s
    assert by[("slide", "1024")]["reduced"].startswith("warm-up 0 and 1 run: predicted 2 s")
    assert (by[("slide", "1024")]["warmup"], by[("slide", "1024")]["runs"]) == (0, 1)
    # slide at 2048 (36 crops): predicted 9.4 s, within the budget once reduced; whole 2048 too
    assert by[("slide", "2048")]["status"] == "ok"
    recs = suite.run_suite(jobs, budget_s=5, isolate=False, long_job_s=2.0)
    by = {(r["phase"], r["size"]): r for r in recs}
    assert by[("slide", "2048")]["status"] == "too_slow"
    assert "budget 5 s" in by[("slide", "2048")]["reason"]


def test_crossover_is_where_it_stays_faster():
    def row(size, speedup):
        return dict(pair=("a", "b"), phase="whole", size=size, pixels=task.parse_shape(size)[0]
                    * task.parse_shape(size)[1], speedup=speedup)
    rows = [row("512", 1.1), row("1024", 0.9), row("1024x2048", 1.05), row("2048", 1.2)]
    assert crossovers(rows) == {("a", "b", "whole"): "1024x2048"}
    assert crossovers([row("512", 0.9), row("2048", 0.95)]) == {("a", "b", "whole"): None}


def _run_tool(*argv):
    """tools/benchmark.py's main, on these arguments."""
    runpy.run_path(str(ROOT / "tools" / "benchmark.py"))["main"](list(argv))


def test_task_mode_arguments(capsys):
    ap = cli.build_parser()
    args = ap.parse_args(["--mode", "seg", "--sizes", "512", "1024x2048"])
    cli.check_args(ap, args)
    assert args.task_models == ["upernet_inline-swin-t", "upernet_l2vit-t", "upernet_swin-t"]
    assert args.phases == ["whole"] and args.sizes == [512, "1024x2048"]
    args = ap.parse_args(["--mode", "seg", "--slide-sizes", "1024x2048"])
    cli.check_args(ap, args)
    assert args.phases == ["whole", "slide"] and args.sizes == ["512", "1024", "1024x2048", "2048"]
    for argv, message in [
        (["--models", "inline_swin_tiny", "--sizes", "1024x2048"], "HxW sizes are for"),
        (["--mode", "seg", "--phases", "slide"], "needs --slide-sizes"),
        (["--mode", "det", "--task-models", "upernet_swin-t"], "not a det model"),
        (["--mode", "det", "--phases", "whole"], "det has"),
    ]:
        with pytest.raises(SystemExit):
            _run_tool(*argv)
        assert message in capsys.readouterr().err


def test_from_json_prints_the_pair_table(tmp_path, capsys):
    rec = dict(kind="task", task="seg", phase="whole", size="1024", pixels=1024 ** 2,
               status="ok", batch=1, mode="whole", precision="32", latency_ms=2000.0)
    recs = [dict(rec, model="upernet_inline-swin-t", label="a whole", cpu_time_ms=1800.0,
                 peak_mem_mb=900.0, parts_cpu_ms={"backbone": 600.0, "other": 10.0}),
            dict(rec, model="upernet_swin-t", label="b whole", cpu_time_ms=2000.0,
                 peak_mem_mb=1000.0, parts_cpu_ms={"backbone": 800.0, "other": 10.0})]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dict(meta={}, records=recs)))
    _run_tool("--from-json", str(path))
    out = capsys.readouterr().out
    assert "| whole | 1024 | 1.80 | 2.00 | **1.11x** | 900 | 1000 | 0.60 / 0.80 | 1.33 |" in out
    assert "faster from 1024 on" in out
