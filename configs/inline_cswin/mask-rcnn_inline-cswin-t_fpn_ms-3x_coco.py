# Mask R-CNN + FPN, InLine-CSwin-T backbone, 3x schedule (36 epochs), multi-scale training with the
# Swin 3x augmentation (mmdet's swin `ms-crop-3x`, from DETR / Sparse R-CNN): a random short side
# in 480..800 step 32, or, with probability 1/2, a short side in {400, 500, 600}, a random
# 384..600 crop and then the 480..800 resize.
_base_ = [
    '../_base_/models/mask-rcnn_inline-cswin-t_fpn.py',
    '../_base_/datasets/coco_instance_ms-crop-3x.py',
    '../_base_/schedules/schedule_3x.py',
    '../_base_/default_runtime.py',
]

# Set explicitly for clarity (same values as the schedule): AdamW lr 1e-4, weight decay 0.05.
optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.05))
