# UperNet + FCN auxiliary head, L2ViT-S backbone, ADE20K 512 x 512, 160k iterations.
_base_ = './upernet_l2vit-t_8xb2-160k_ade20k-512x512.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/ChuanyangZheng/L2ViT); nothing is downloaded by these configs.
pretrained = 'pretrained/l2vit_s.pth'

model = dict(
    backbone=dict(
        arch='small',
        # As the official upernet_l2vit_small_512x512_160k_ade20k.py.
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
