# Mask R-CNN + FPN with the L2ViT-T backbone: the model shared by the family's 1x and
# 3x configs (which add data, schedule and runtime).
_base_ = './mask-rcnn_fpn.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/ChuanyangZheng/L2ViT); nothing is downloaded by these configs.
# Set `init_cfg=None` in `model.backbone` to train from scratch.
pretrained = 'pretrained/l2vit_t.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='L2ViTBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # Detection drop-path rates follow the official L2ViT detection configs:
        # 0.1 as in maskrcnn_1x_l2vit_v0_tiny_coco.py (1x: T/S 0.1, B 0.2; 3x: T/S 0.2, B 0.3).
        drop_path_rate=0.1,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
