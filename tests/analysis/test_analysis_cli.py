"""tools/analyze.py end to end on a tiny model: every subcommand writes its figure and JSON, the
token guard refuses large maps, and ERF fractions are those of the stored maps."""

import json

import numpy as np
import pytest
from PIL import Image

from analysis.cli import main
from analysis.erf import area_fractions

MODEL = ["--model", "inline_pvt_tiny", "--model-kwargs",
         '{"embed_dims": [16, 32, 32, 32], "num_heads": [1, 2, 2, 2], "depths": [1, 1, 1, 1], '
         '"mlp_ratios": [2, 2, 2, 2], "img_size": 48}']


def _run(tmp_path, *args) -> dict:
    out = tmp_path / args[0]
    assert main([*args, *MODEL, "--out", str(out)]) == 0
    return json.loads((out / f"{args[0]}.json").read_text())


def test_attention(tmp_path):
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8)).save(img)
    res = _run(tmp_path, "attention", "--images", str(img), "--size", "40", "56", "--block",
               "0.0", "1.0", "--points", "0.5,0.5", "0,1")
    assert [b["block"] for b in res["blocks"]] == ["0.0", "1.0"]
    b = res["blocks"][0]
    assert b["queries"] == b["keys"] == 10 * 14
    assert b["check"]["max_abs_error"] <= 1e-5 * b["check"]["max_abs_output"]
    assert b["local_terms"] == ["predicted 3x3 residual"]
    assert [p["token"] for p in b["points"]] == [[5, 7], [0, 13]]   # (y, x): top right
    maps = b["points"][0]["maps"]
    assert set(maps) == {"inline", "local", "inline+local", "linear", "softmax"}
    assert maps["inline"]["sum"] == pytest.approx(1.0) and maps["local"]["sum"] != 0
    assert maps["local"]["neighbourhood_3x3_share"] == pytest.approx(1.0)
    for blk in res["blocks"]:
        assert (tmp_path / "attention" / f"attention_{blk['block']}.png").stat().st_size > 1000


def test_explicit_maps_refuse_too_many_tokens(tmp_path, capsys):
    rc = main(["attention", *MODEL, "--size", "64", "--max-tokens", "100", "--out",
               str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "256 queries x 256 keys" in err and "100 tokens" in err and "--max-tokens" in err


def test_injectivity_counts(tmp_path):
    res = _run(tmp_path, "injectivity", "--size", "32", "--block", "0.0", "--rays", "4")
    kinds = res["blocks"][0]["kinds"]
    lin, inl = kinds["linear"]["total"], kinds["inline"]["total"]
    assert lin["scaled"]["identical"] == lin["scaled"]["queries"] == 64
    assert inl["scaled"]["identical"] == 0
    assert lin["collinear"]["rays_all_identical"] == lin["collinear"]["rays"] == 4
    assert (tmp_path / "injectivity" / "injectivity_0.0.png").exists()


def test_rank(tmp_path):
    res = _run(tmp_path, "rank", "--size", "32", "--num-images", "2")
    assert [b["block"] for b in res["blocks"]] == ["0.0", "1.0", "2.0", "3.0"]
    first = res["blocks"][0]["kinds"]
    assert first["linear"]["mean"]["rank"] <= res["blocks"][0]["head_dim"]
    assert (tmp_path / "rank" / "rank.png").exists()


def test_erf_compare_and_stored_maps(tmp_path):
    kw = MODEL[3]
    spec = "inline_pvt_tiny:" + ",".join(
        f"{k}={v}" for k, v in json.loads(kw).items()).replace(" ", "")
    out = tmp_path / "erf"
    rc = main(["erf", "--compare", spec, spec + ",attn_types=LLLL", "--size", "48",
               "--num-images", "2", "--stages", "0", "2", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "erf.json").read_text())
    assert len(res["models"]) == 2 and (out / "erf.png").exists()
    assert res["models"][1]["model"]["kwargs"]["attn_types"] == "LLLL"
    for model in res["models"]:
        for stage in model["stages"]:
            stored = np.load(stage["map"])
            assert stored["grad"].shape == (48, 48)
            again = area_fractions(stored["grad"], stored["centre"], res["thresholds"])
            assert again == stage["fractions"]
            assert 0 < stage["fractions"]["0.5"]["square"] <= stage["fractions"]["0.99"]["square"]
