# UperNet + FCN auxiliary head, InLine-CSwin-S backbone, ADE20K 512 x 512, 160k iterations.
_base_ = './upernet_inline-cswin-t_8xb2-160k_ade20k-512x512.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
pretrained = 'pretrained/inline_cswin_s.pth'

model = dict(
    backbone=dict(
        arch='small',
        # CSwin-S's own UperNet config: 0.4.
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
