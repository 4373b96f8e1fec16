# UperNet + FCN auxiliary head, InLine-Swin-B backbone, ADE20K 512 x 512, 160k iterations.
_base_ = './upernet_inline-swin-t_8xb2-160k_ade20k-512x512.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
pretrained = 'pretrained/inline_swin_b.pth'

model = dict(
    backbone=dict(
        arch='base',
        # Swin-B UperNet: 0.3 (see the T config).
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
