# Mask R-CNN + FPN with the InLine-PVT-T backbone: the model shared by the family's 1x and
# 3x configs (which add data, schedule and runtime).
_base_ = './mask-rcnn_fpn.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
# Set `init_cfg=None` in `model.backbone` to train from scratch.
pretrained = 'pretrained/inline_pvt_t.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLinePVTBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # Detection drop-path rates follow the sister repos' detection configs (InLine ships
        # none): 0.1 for every PVT size in whai362/PVT's detection code.
        drop_path_rate=0.1,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512]))
