"""InLine and L2ViT backbones, registered with timm on import.

Pure torch + timm: nothing here imports MMDetection, MMSegmentation or Lightning.
"""

from . import attention
from ._helpers import load_checkpoint, unwrap_state_dict
from .inline_cswin import InLineCSwin
from .inline_deit import InLineDeiT
from .inline_pvt import InLinePVT
from .inline_swin import InLineSwin
from .l2vit import L2ViT

__all__ = [
    "InLineCSwin",
    "InLineDeiT",
    "InLinePVT",
    "InLineSwin",
    "L2ViT",
    "attention",
    "load_checkpoint",
    "unwrap_state_dict",
]
