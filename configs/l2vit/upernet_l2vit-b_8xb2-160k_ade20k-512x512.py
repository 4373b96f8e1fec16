# UperNet + FCN auxiliary head, L2ViT-B backbone, ADE20K 512 x 512, 160k iterations.
_base_ = './upernet_l2vit-t_8xb2-160k_ade20k-512x512.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/ChuanyangZheng/L2ViT); nothing is downloaded by these configs.
pretrained = 'pretrained/l2vit_b.pth'

model = dict(
    backbone=dict(
        arch='base',
        # As the official upernet_l2vit_base_512x512_160k_ade20k.py.
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
