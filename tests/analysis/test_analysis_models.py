"""Model specs and checkpoints: official-style state dicts through the family filter, and this
project's Lightning checkpoints (classification, EMA, detection / segmentation backbones)."""

import pytest
import timm
import torch

from analysis.models import backbone_prefix, load_model, parse_model_kwargs, parse_model_spec

PVT = dict(embed_dims=[16, 32, 32, 32], num_heads=[1, 2, 2, 2], depths=[1, 1, 1, 1],
           mlp_ratios=[2, 2, 2, 2], img_size=64)


def test_parse_model_kwargs():
    assert parse_model_kwargs(['{"attn_types": "SSSS", "depths": [1, 2]}']) == {
        "attn_types": "SSSS", "depths": [1, 2]}
    assert parse_model_kwargs(["attn_types=SSSS", "depths=[1,1,1,1]", "global_softmax=True",
                               "window_size=7", "img_size=(64, 48)"]) == {
        "attn_types": "SSSS", "depths": [1, 1, 1, 1], "global_softmax": True, "window_size": 7,
        "img_size": (64, 48)}
    assert parse_model_kwargs("attn_types=SSSS,depths=[2,2],kernel=relu") == {
        "attn_types": "SSSS", "depths": [2, 2], "kernel": "relu"}
    with pytest.raises(ValueError, match="key=value"):
        parse_model_kwargs(["attn_types"])


def test_parse_model_spec():
    assert parse_model_spec("inline_swin_tiny") == ("inline_swin_tiny", {}, None)
    assert parse_model_spec("inline_swin_tiny:attn_types=SSSS,global_softmax=true") == (
        "inline_swin_tiny", {"attn_types": "SSSS", "global_softmax": True}, None)
    assert parse_model_spec("@a/b.ckpt") == (None, {}, "a/b.ckpt")
    assert parse_model_spec("x:depths=[1,1]@c.pth") == ("x", {"depths": [1, 1]}, "c.pth")


def _reference(**overrides):
    torch.manual_seed(1)
    return timm.create_model("inline_pvt_tiny", num_classes=0, **{**PVT, **overrides})


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_official_state_dict_through_the_family_filter(tmp_path):
    ref = _reference()
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}   # DDP prefixes, 'model' wrap
    sd["module.head.weight"] = torch.zeros(1000, 32)                 # a classifier: ignored
    torch.save({"model": sd, "epoch": 300}, tmp_path / "official.pth")
    lm = load_model("inline_pvt_tiny", PVT, str(tmp_path / "official.pth"))
    assert _same_weights(lm.model, ref)
    assert lm.checkpoint["format"] == "state_dict" and lm.checkpoint["prefix"] == ""
    # Another resolution: the filter resamples the position embeddings.
    lm = load_model("inline_pvt_tiny", {**PVT, "img_size": 96}, str(tmp_path / "official.pth"))
    assert lm.model.pos_embed1.shape[1] == 24 * 24


def test_lightning_classification_checkpoint(tmp_path):
    ref, ema = _reference(), _reference()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    sd = {**{f"model.backbone.{k}": v for k, v in ref.state_dict().items()},
          "model.head.weight": torch.zeros(4, 32), "model.head.bias": torch.zeros(4),
          **{f"model_ema.module.backbone.{k}": v for k, v in ema.state_dict().items()}}
    ckpt = {"state_dict": sd, "pytorch-lightning_version": "2.6.0", "epoch": 7,
            "hyper_parameters": {"model_name": "inline_pvt_tiny", "model_kwargs": PVT,
                                 "num_classes": 4}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    lm = load_model(None, None, str(tmp_path / "last.ckpt"))          # model from hparams
    assert lm.name == "inline_pvt_tiny" and lm.kwargs == PVT
    assert lm.checkpoint["prefix"] == "model.backbone."
    assert _same_weights(lm.model, ref)
    assert lm.default_size() == (64, 64)
    lm = load_model(None, None, str(tmp_path / "last.ckpt"), ema=True)
    assert lm.checkpoint["prefix"] == "model_ema.module.backbone."
    assert _same_weights(lm.model, ema)
    # Overrides that do not fit the weights fail with the keys named.
    with pytest.raises(ValueError, match="does not match"):
        load_model(None, {"depths": [2, 1, 1, 1]}, str(tmp_path / "last.ckpt"))


def test_lightning_detection_checkpoint(tmp_path):
    """The MM backbone sits under model.backbone.model. (its final norm pruned); the neck and
    heads are not the backbone's. The model comes from the config in the hyper-parameters."""
    ref = _reference()
    sd = {f"model.backbone.model.{k}": v for k, v in ref.state_dict().items()}
    sd.update({"model.backbone.norm0.weight": torch.ones(16),
               "model.neck.lateral_convs.0.conv.weight": torch.zeros(64, 16, 1, 1),
               "model.rpn_head.rpn_conv.weight": torch.zeros(64, 64, 3, 3)})
    backbone_cfg = {"type": "InLinePVTBackbone", "arch": "tiny", "out_indices": [0, 1, 2, 3],
                    "init_cfg": None, **PVT}
    ckpt = {"state_dict": sd, "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {"config": {"model": {"backbone": backbone_cfg}}}}
    torch.save(ckpt, tmp_path / "det.ckpt")
    lm = load_model(None, None, str(tmp_path / "det.ckpt"))
    assert lm.name == "inline_pvt_tiny"
    assert lm.checkpoint["prefix"] == "model.backbone.model."
    assert _same_weights(lm.model, ref)


def test_backbone_prefix_prefers_most_matches():
    keys = ["a.b.w", "a.b.v", "ema.b.w", "ema.b.v", "x.w"]
    assert backbone_prefix(keys, {"w", "v"}) == ("a.b.", 2)
    assert backbone_prefix(keys, {"w", "v"}, prefer_ema=True) == ("ema.b.", 2)
    assert backbone_prefix(keys, {"q"}) == ("", 0)


def test_no_model_named():
    with pytest.raises(ValueError, match="--model"):
        load_model(None)
    with pytest.raises(ValueError, match="unknown model"):
        load_model("no_such_model")
