"""COCO detection / instance segmentation: the shared MM bridge with mmdet's registries."""

from .mm_bridge import MMModelModule


class DetectionModule(MMModelModule):
    """An mmdet model (Mask R-CNN, RetinaNet, ...) trained and evaluated from its config."""

    task_scope = "mmdet"
    monitor = "coco/bbox_mAP"
