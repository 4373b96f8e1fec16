# Semantic FPN, InLine-PVT-M backbone, ADE20K 512 x 512, 40k iterations.
_base_ = './fpn_inline-pvt-t_4xb4-40k_ade20k-512x512.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
pretrained = 'pretrained/inline_pvt_m.pth'

model = dict(
    backbone=dict(
        arch='medium',
        # As PVT's Semantic FPN backbones: 0.1 for every size.
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
