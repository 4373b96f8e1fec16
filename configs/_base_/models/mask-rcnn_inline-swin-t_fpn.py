# Mask R-CNN + FPN with the InLine-Swin-T backbone: the model shared by the family's 1x and
# 3x configs (which add data, schedule and runtime).
_base_ = './mask-rcnn_fpn.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
# Set `init_cfg=None` in `model.backbone` to train from scratch.
pretrained = 'pretrained/inline_swin_t.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLineSwinBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # Detection drop-path rates follow the sister repos' detection configs (InLine ships
        # none): Swin-T 0.2 in Swin-Transformer-Object-Detection (1x and 3x).
        drop_path_rate=0.2,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
