# Mask R-CNN + FPN, InLine-Swin-T backbone, 1x schedule (12 epochs), single-scale training.
_base_ = [
    '../_base_/models/mask-rcnn_inline-swin-t_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]

# Set explicitly for clarity (same values as the schedule): AdamW lr 1e-4, weight decay 0.05.
optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.05))
