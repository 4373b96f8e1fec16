# Mask R-CNN + FPN, L2ViT-T backbone, 3x schedule (36 epochs), multi-scale training with the
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
# (github.com/ChuanyangZheng/L2ViT); nothing is downloaded by these configs.
# Set `init_cfg=None` in `model.backbone` to train from scratch.
pretrained = 'pretrained/l2vit_t.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='L2ViT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # Detection drop-path rates follow the official L2ViT detection configs:
        # 0.2 as in maskrcnn_3x_l2vit_v0_tiny_coco.py (1x: T/S 0.1, B 0.2; 3x: T/S 0.2, B 0.3).
        drop_path_rate=0.2,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
