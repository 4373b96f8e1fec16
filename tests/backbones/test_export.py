"""Deployment export with a dynamic input height and width, for every family: the classifier and
the ``features_only`` backbone exported once with ``torch.export`` and with the dynamo ONNX
exporter (run with onnxruntime), then compared with eager PyTorch at other sizes: non-square,
needing patch, window and stripe padding, on both sides of Swin's shift rule, and the smallest
size the exported graph takes.

The models are built tiny (every attention kind of the family kept) with windows and stripes of
3, so that small inputs already need window padding and reach both sides of the shift rule.
"""

import onnxruntime as ort
import pytest
import timm
import torch
import torch.fx.experimental._config as fx_config
from torch.export import Dim

import backbones  # noqa: F401  (registers the models)

# Per family: the tiny build, and the smallest side the exported graph takes (eager runs any size
# >= 1): the coarsest map must be at least 2 x 2, i.e. one pixel more than the largest stride.
FAMILIES = {
    "inline_deit_tiny": dict(kwargs=dict(embed_dim=32, num_heads=2, depth=2), min_side=17,
                             features=dict(out_indices=(0, 1))),
    "inline_pvt_tiny": dict(kwargs=dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4),
                                        depths=(1, 1, 1, 1)), min_side=33),
    # IIIS: InLine stages, then window softmax with a shifted block.
    "inline_swin_tiny": dict(kwargs=dict(embed_dim=32, depths=(1, 1, 1, 2),
                                         num_heads=(2, 4, 8, 16), window_size=3), min_side=33),
    # IISS: InLine stages, cross-shaped stripes (padded at these sizes), whole-map softmax.
    "inline_cswin_tiny": dict(kwargs=dict(embed_dim=32, depths=(1, 1, 1, 1),
                                          num_heads=(2, 2, 2, 4), split_size=(1, 2, 3, 3)),
                              min_side=33),
    # Every stage keeps a local-window block; the last one also a global block.
    "l2vit_tiny": dict(kwargs=dict(dims=(32, 64, 96, 128), depths=(1, 1, 1, 2),
                                   num_heads=(1, 2, 3, 4), window_size=3), min_side=33),
}
EXPORT_HW = (64, 64)  # Swin's last map 2 x 2: fits one window, no shift
# Non-square, padding at every stride; 5 x 4 last map (Swin shifts); the smallest.
CHECK_HW = [(97, 61), (160, 128), "min"]
TOL = 1e-4


def build(name: str, kind: str) -> torch.nn.Module:
    fam = FAMILIES[name]
    extra = dict(features_only=True, **fam.get("features", {})) if kind == "features" else {}
    torch.manual_seed(0)
    return timm.create_model(name, **fam["kwargs"], **extra).eval()


def dynamic_hw(name: str, max_side: int = 2048) -> dict:
    """The image's height and width as export dimensions, from the family's smallest side."""
    lo = FAMILIES[name]["min_side"]
    return {"x": {2: Dim("h", min=lo, max=max_side), 3: Dim("w", min=lo, max=max_side)}}


def check_sizes(name: str) -> list[tuple[int, int]]:
    lo = FAMILIES[name]["min_side"]
    return [(lo, lo) if hw == "min" else hw for hw in CHECK_HW]


def as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def assert_matches_eager(m: torch.nn.Module, run, sizes: list[tuple[int, int]]) -> None:
    for hw in sizes:
        x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(hw[0]))
        with torch.no_grad():
            ref = as_list(m(x))
        out = as_list(run(x))
        assert len(out) == len(ref), hw
        for o, r in zip(out, ref, strict=True):
            o = torch.as_tensor(o)
            assert o.shape == r.shape, (hw, o.shape, r.shape)
            torch.testing.assert_close(o, r, atol=TOL, rtol=0, msg=lambda m, hw=hw: f"{hw}: {m}")


def export_program(m: torch.nn.Module, name: str) -> torch.export.ExportedProgram:
    # Size-oblivious reasoning for the symbolic sizes (what torch.onnx.export does itself): a
    # window or stripe count that is 1 at the example size is then not fixed to 1.
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        return torch.export.export(m, (torch.randn(1, 3, *EXPORT_HW),),
                                   dynamic_shapes=dynamic_hw(name))


@pytest.mark.parametrize("name", FAMILIES)
def test_torch_export_features_any_size(name, tmp_path):
    m = build(name, "features")
    # Saved and loaded (.pt2), as tools/export.py --format exported-program gives it to users.
    torch.export.save(export_program(m, name), tmp_path / "m.pt2")
    ep = torch.export.load(tmp_path / "m.pt2")
    assert_matches_eager(m, ep.module(), check_sizes(name))
    # Below the exported range the program refuses the input instead of computing garbage.
    lo = FAMILIES[name]["min_side"]
    with pytest.raises(AssertionError, match=rf"size\(\)\[2\] >= {lo}"):
        ep.module()(torch.randn(1, 3, lo - 1, lo))


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_torch_export_classifier_any_size(name):
    m = build(name, "classifier")
    assert_matches_eager(m, export_program(m, name).module(), check_sizes(name))


# ONNX export takes 15-90 s a model here: the cheapest one runs by default, the rest with `slow`.
FAST_ONNX = ("inline_deit_tiny", "classifier")
ONNX_CASES = [pytest.param(name, kind, marks=() if (name, kind) == FAST_ONNX else pytest.mark.slow)
              for name in FAMILIES for kind in ("features", "classifier")]


@pytest.mark.parametrize("name,kind", ONNX_CASES)
def test_onnx_export_any_size(name, kind, tmp_path):
    m = build(name, kind)
    path = tmp_path / f"{name}_{kind}.onnx"
    with torch.no_grad():
        torch.onnx.export(m, (torch.randn(1, 3, *EXPORT_HW),), path, dynamo=True,
                          dynamic_shapes=dynamic_hw(name), verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    assert_matches_eager(m, lambda x: session.run(None, {input_name: x.numpy()}),
                         check_sizes(name))
