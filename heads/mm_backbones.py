"""The five backbone families as MMDetection / MMSegmentation backbones.

Configs reach this module through ``custom_imports=dict(imports=['heads.mm_backbones'])`` and
name a class as ``type`` (``InLinePVTBackbone``, ...). Each class is a thin adapter around the
timm model (``TimmBackbone``): build it by ``arch`` (the same builders as ``timm.create_model``),
return the multi-scale tuple with one LayerNorm per output level (as the L2ViT downstream code
does), load ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` through the family's checkpoint
filter, and freeze ``frozen_stages``. Each is registered once in both toolboxes' ``MODELS``.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS as MMSEG_MODELS
from timm.models._manipulate import group_parameters
from torch import nn

from backbones import inline_cswin, inline_deit, inline_pvt, inline_swin, l2vit
from backbones._helpers import load_checkpoint

from .simple_pyramid import LayerNorm2d


class TimmBackbone(BaseModule):
    """A family's timm model as an MM backbone returning NCHW maps for ``out_indices``.

    ``arch`` picks the variant (``{family}_{arch}`` in timm); other keyword arguments override the
    variant's (``attn_types``, ``window_size``, ``depths`` ...). ``frozen_stages=k`` freezes the
    stem and the first k stages as the model's coarse ``group_matcher`` groups them (for
    InLine-DeiT a stage is a block). ``norm_eval`` keeps BatchNorm statistics fixed in training.
    """

    family: str = ""
    filter_fn = None

    def __init__(self, arch: str = "tiny", out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float | None = None, frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool = False, out_norm: bool = True,
                 init_cfg: dict | None = None, **overrides):
        super().__init__(init_cfg=init_cfg)
        name = f"{self.family}_{arch}"
        if name not in timm.list_models(f"{self.family}_*"):
            archs = [m[len(self.family) + 1:] for m in timm.list_models(f"{self.family}_*")]
            raise ValueError(f"unknown {type(self).__name__} arch {arch!r}; choose from {archs}")
        if drop_path_rate is not None:
            overrides["drop_path_rate"] = drop_path_rate
        model = timm.create_model(name, pretrained=False, num_classes=0, **overrides)
        num_levels = len(model.feature_info)
        out_indices = tuple(out_indices)
        if not out_indices or any(not -num_levels <= i < num_levels for i in out_indices):
            raise ValueError(f"out_indices {out_indices} out of range: {name} has {num_levels} "
                             f"feature levels (0..{num_levels - 1})")
        self.out_indices = tuple(i % num_levels for i in out_indices)
        model.prune_intermediate_layers(self.out_indices, prune_norm=True, prune_head=True)
        if with_cp:
            model.set_grad_checkpointing(True)
        self.model = model
        self.out_channels = [model.feature_info[i]["num_chs"] for i in self.out_indices]
        self.out_strides = [model.feature_info[i]["reduction"] for i in self.out_indices]
        if out_norm:
            for level, ch in zip(self.out_indices, self.out_channels, strict=True):
                self.add_module(f"norm{level}", LayerNorm2d(ch))
        self.out_norm = out_norm
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        groups = group_parameters(self.model, self.model.group_matcher(coarse=True))
        frozen = {n for g, names in groups.items() if g <= self.frozen_stages for n in names}
        for n, p in self.model.named_parameters():
            if n in frozen:
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.frozen_stages >= 0:
            # Frozen parts keep their statistics and dropout off, as in mmdet's backbones.
            for m in self.model.modules():
                params = list(m.parameters())
                if params and not any(p.requires_grad for p in params):
                    m.eval()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def init_weights(self) -> None:
        """Load ``init_cfg`` Pretrained through the family's checkpoint filter; report the keys
        the checkpoint lacks or the backbone does not use (the classifier is dropped)."""
        cfg = self.init_cfg or {}
        if cfg.get("type") != "Pretrained":
            return super().init_weights()
        path = cfg.get("checkpoint")
        if not path:
            raise ValueError(f"{type(self).__name__}: init_cfg Pretrained needs a checkpoint path")
        result = load_checkpoint(self.model, path, filter_fn=type(self).filter_fn, strict=False)
        unexpected = [k for k in result.unexpected_keys if not k.startswith("head.")]
        print_log(f"{type(self).__name__}: loaded {path}", logger="current")
        if result.missing_keys:
            print_log(f"missing keys (left at their initialisation): {result.missing_keys}",
                      logger="current", level=30)
        if unexpected:
            print_log(f"unexpected keys (not used by the backbone): {unexpected}",
                      logger="current", level=30)
        self._is_init = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.model.forward_intermediates(x, indices=list(self.out_indices),
                                                 intermediates_only=True)
        if self.out_norm:
            feats = [getattr(self, f"norm{i}")(f) for i, f in zip(self.out_indices, feats,
                                                                   strict=True)]
        # Token-layout maps come out channels-last in memory, and convolutions (FPN) keep that
        # layout; mmcv's RoIAlign reads its input as dense NCHW whatever the strides, so
        # channels-last maps gave Mask R-CNN's RoI heads scrambled features.
        return tuple(f.contiguous() for f in feats)


@MMDET_MODELS.register_module()
@MMSEG_MODELS.register_module()
class InLineDeiTBackbone(TimmBackbone):
    """``inline_deit_*`` (one stride-16 map per output index, a block each)."""

    family = "inline_deit"
    filter_fn = staticmethod(inline_deit.checkpoint_filter_fn)


@MMDET_MODELS.register_module()
@MMSEG_MODELS.register_module()
class InLinePVTBackbone(TimmBackbone):
    """``inline_pvt_*``: four stages, strides 4 to 32."""

    family = "inline_pvt"
    filter_fn = staticmethod(inline_pvt.checkpoint_filter_fn)


@MMDET_MODELS.register_module()
@MMSEG_MODELS.register_module()
class InLineSwinBackbone(TimmBackbone):
    """``inline_swin_*``: four stages, strides 4 to 32."""

    family = "inline_swin"
    filter_fn = staticmethod(inline_swin.checkpoint_filter_fn)


@MMDET_MODELS.register_module()
@MMSEG_MODELS.register_module()
class InLineCSwinBackbone(TimmBackbone):
    """``inline_cswin_*``: four stages, strides 4 to 32."""

    family = "inline_cswin"
    filter_fn = staticmethod(inline_cswin.checkpoint_filter_fn)


@MMDET_MODELS.register_module()
@MMSEG_MODELS.register_module()
class L2ViTBackbone(TimmBackbone):
    """``l2vit_*``: four stages, strides 4 to 32."""

    family = "l2vit"
    filter_fn = staticmethod(l2vit.checkpoint_filter_fn)


__all__ = ["InLineCSwinBackbone", "InLineDeiTBackbone", "InLinePVTBackbone",
           "InLineSwinBackbone", "L2ViTBackbone", "TimmBackbone"]
