# Mask R-CNN + FPN, InLine-PVT-M backbone, 3x schedule (36 epochs), Swin multi-scale training.
_base_ = './mask-rcnn_inline-pvt-t_fpn_ms-3x_coco.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
pretrained = 'pretrained/inline_pvt_m.pth'

model = dict(
    backbone=dict(
        arch='medium',
        # Sister repos' detection configs: 0.1 for every PVT size (whai362/PVT detection).
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
