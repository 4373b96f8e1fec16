# Mask R-CNN + FPN, InLine-PVT-T backbone, 3x schedule (36 epochs), multi-scale training with the
# Swin 3x augmentation (mmdet's swin `ms-crop-3x`, from DETR / Sparse R-CNN): a random short side
# in 480..800 step 32, or, with probability 1/2, a short side in {400, 500, 600}, a random
# 384..600 crop and then the 480..800 resize.
_base_ = [
    '../_base_/models/mask-rcnn_fpn.py',
    '../_base_/datasets/coco_instance_ms-crop-3x.py',
    '../_base_/schedules/schedule_3x.py',
    '../_base_/default_runtime.py',
]

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
# Set `init_cfg=None` in `model.backbone` to train from scratch.
pretrained = 'pretrained/inline_pvt_t.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLinePVT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # Detection drop-path rates follow the sister repos' detection configs (InLine ships
        # none): 0.1 for every PVT size in whai362/PVT's detection code.
        drop_path_rate=0.1,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512]))
