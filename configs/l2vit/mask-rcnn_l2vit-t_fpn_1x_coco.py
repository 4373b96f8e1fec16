# Mask R-CNN + FPN, L2ViT-T backbone, 1x schedule (12 epochs), single-scale training.
_base_ = [
    '../_base_/models/mask-rcnn_l2vit-t_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
