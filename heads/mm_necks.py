"""The ViTDet simple feature pyramid as an MMDetection / MMSegmentation neck.

Configs reach it through ``custom_imports=dict(imports=['heads.mm_necks'])`` and
``neck=dict(type='SimplePyramidNeck', ...)`` (single-scale backbones such as InLine-DeiT).
"""

from mmdet.registry import MODELS as MMDET_MODELS
from mmseg.registry import MODELS as MMSEG_MODELS

from .simple_pyramid import SimpleFeaturePyramid

__all__ = ["SimplePyramidNeck"]


@MMDET_MODELS.register_module()
@MMSEG_MODELS.register_module()
class SimplePyramidNeck(SimpleFeaturePyramid):
    """``SimpleFeaturePyramid`` registered as an MM neck; it needs no MM initialisation."""
