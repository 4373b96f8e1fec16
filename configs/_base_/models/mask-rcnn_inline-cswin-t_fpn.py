# Mask R-CNN + FPN with the InLine-CSwin-T backbone: the model shared by the family's 1x and
# 3x configs (which add data, schedule and runtime).
_base_ = './mask-rcnn_fpn.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
# Set `init_cfg=None` in `model.backbone` to train from scratch.
pretrained = 'pretrained/inline_cswin_t.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLineCSwinBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # Detection drop-path rates: InLine and CSwin ship no detection configs; T 0.2 /
        # S 0.3 as for the Swin-style sister repos (CSwin's own segmentation configs use
        # T 0.3 / S 0.4).
        drop_path_rate=0.2,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
