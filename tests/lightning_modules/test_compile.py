"""torch.compile as an option of the Lightning modules: same numbers, same parameter names.

The fast tests trace with ``aot_eager`` (dynamo + AOTAutograd, forward and backward graphs,
no code generation); the slow one generates code with inductor (~1-2 min on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_classification import SMALL
from test_detection import DEMO, demo_cfg

from lightning_modules.classification import ClassificationModule
from lightning_modules.cli import _config, train_parser
from lightning_modules.demo_data import make_coco_demo
from lightning_modules.detection import DetectionModule
from lightning_modules.mm_bridge import MMDataModule


def _eager_and_compiled(compile_cfg) -> tuple[ClassificationModule, ClassificationModule]:
    kw = dict(model_name="inline_pvt_tiny", num_classes=4, model_kwargs=SMALL, mixup_alpha=0,
              cutmix_alpha=0, label_smoothing=0.0)
    eager = ClassificationModule(**kw)
    compiled = ClassificationModule(**kw, compile=compile_cfg)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def _loss_and_grads(module: ClassificationModule, x, y):
    module.zero_grad()
    loss = torch.nn.functional.cross_entropy(module(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters()}


def _assert_compiled_classifier_matches(compile_cfg, tol: float) -> None:
    torch.manual_seed(0)
    eager, compiled = _eager_and_compiled(compile_cfg)
    assert compiled.model._compiled_call_impl is not None
    assert eager.model._compiled_call_impl is None
    # Checkpoints keep their names (torch.compile(m) would prefix them with '_orig_mod.').
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x, y = torch.randn(4, 3, 40, 52), torch.tensor([0, 1, 2, 3])
    loss_e, grads_e = _loss_and_grads(eager, x, y)
    loss_c, grads_c = _loss_and_grads(compiled, x, y)
    torch.testing.assert_close(loss_c, loss_e, rtol=tol, atol=tol)
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, rtol=tol, atol=tol, msg=name)


def test_classification_compile_traces_forward_and_backward():
    _assert_compiled_classifier_matches({"backend": "aot_eager"}, tol=1e-5)


@pytest.mark.slow
def test_classification_compile_inductor():
    _assert_compiled_classifier_matches(True, tol=1e-4)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_coco_demo(root, num_train=4, num_val=2, seed=1)
    return root / "coco"


def test_mm_config_compile_compiles_the_backbone(coco_root: Path):
    """The config's ``compile`` compiles the backbone in place; detection losses equal eager."""
    eager = DetectionModule(demo_cfg(coco_root))
    compiled = DetectionModule(demo_cfg(coco_root, compile={"backend": "aot_eager"}))
    compiled.load_state_dict(eager.state_dict())
    assert compiled.model.backbone._compiled_call_impl is not None
    assert compiled.model.roi_head._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(eager.state_dict())

    data = MMDataModule(demo_cfg(coco_root))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    losses = {}
    for name, module in (("eager", eager), ("compiled", compiled)):
        torch.manual_seed(0)  # the RoI sampler draws at random
        inputs = module.model.data_preprocessor(batch, True)
        losses[name] = module.model.parse_losses(module.model(**inputs, mode="loss"))[0]
    torch.testing.assert_close(losses["compiled"], losses["eager"], rtol=1e-5, atol=1e-5)


def test_compile_flag_sets_the_config_key():
    args = train_parser("detection").parse_args([str(DEMO), "--compile"])
    assert _config(args).compile is True
    args = train_parser("detection").parse_args(
        [str(DEMO), "--compile", "--cfg-options", "compile.mode=max-autotune"])
    assert _config(args).compile == {"mode": "max-autotune"}
    assert "compile" not in _config(train_parser("detection").parse_args([str(DEMO)]))
