# RetinaNet + FPN, InLine-PVT-S backbone, 1x schedule (12 epochs), single-scale training.
_base_ = './retinanet_inline-pvt-t_fpn_1x_coco.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
pretrained = 'pretrained/inline_pvt_s.pth'

model = dict(
    backbone=dict(
        arch='small',
        # Sister repos' detection configs: 0.1 for every PVT size (whai362/PVT detection).
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
