"""The installed stack: compiled mmcv ops work on CPU, packages import, safe loading behaves."""

import numpy as np
import pytest
import torch


def test_packages_import():
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401

    import backbones  # noqa: F401
    import heads  # noqa: F401
    import lightning_modules  # noqa: F401
    from lightning_modules.compat import check_mm_versions

    check_mm_versions()


def test_mmcv_nms_keeps_the_expected_boxes():
    from mmcv.ops import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # By hand: IoU(0,1) = 81/119 = 0.68 > 0.5 -> 1 dropped; box 2 is disjoint; IoU(0,3) = 0.5,
    # not above the threshold 0.6 -> kept.
    dets, keep = nms(boxes, scores, iou_threshold=0.6)
    assert keep.tolist() == [0, 2, 3]
    torch.testing.assert_close(dets[:, 4], scores[[0, 2, 3]])
    _, keep = nms(boxes, scores, iou_threshold=0.4)
    assert keep.tolist() == [0, 2]


def test_mmcv_roi_align_matches_torchvision_forward_and_backward():
    from mmcv.ops import RoIAlign
    from torchvision.ops import roi_align

    feats = torch.randn(2, 3, 16, 20, requires_grad=True)
    rois = torch.tensor([[0, 1.5, 2.0, 9.0, 12.5], [1, 0.0, 0.0, 19.0, 15.0],
                         [1, 4.2, 3.3, 8.8, 7.1]])
    out = RoIAlign((5, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feats, rois)
    ref = roi_align(feats, rois, (5, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, feats, g)
    (grad_ref,) = torch.autograd.grad(ref, feats, g)
    torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-5)
    assert grad.abs().sum() > 0


def test_mmengine_loads_numpy_meta_safely_and_refuses_pickled_objects(tmp_path, monkeypatch):
    from mmengine.logging import HistoryBuffer
    from mmengine.runner.checkpoint import load_checkpoint

    import lightning_modules  # noqa: F401  (installs the loader)

    model = torch.nn.Linear(3, 2)
    plain = tmp_path / "meta.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"epoch": np.int64(3),
                                                           "hist": np.ones(2)}}, plain)
    target = torch.nn.Linear(3, 2)
    ckpt = load_checkpoint(target, str(plain))
    assert int(ckpt["meta"]["epoch"]) == 3
    torch.testing.assert_close(target.weight, model.weight)

    runner_style = tmp_path / "runner.pth"
    buf = HistoryBuffer()
    buf.update(1.0)
    torch.save({"state_dict": model.state_dict(), "message_hub": {"loss": buf}}, runner_style)
    with pytest.raises(RuntimeError, match="LAV_TRUSTED_CHECKPOINTS=1"):
        load_checkpoint(torch.nn.Linear(3, 2), str(runner_style))
    monkeypatch.setenv("LAV_TRUSTED_CHECKPOINTS", "1")
    load_checkpoint(torch.nn.Linear(3, 2), str(runner_style))
