# UperNet + FCN auxiliary head with the L2ViT-T backbone: the model shared by the family's
# ADE20K configs (which add data, schedule and runtime).
_base_ = './upernet_fcn-aux.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/ChuanyangZheng/L2ViT); nothing is downloaded by these configs.
# Set `init_cfg=None` in `model.backbone` to train from scratch.
pretrained = 'pretrained/l2vit_t.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='L2ViTBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # As the official L2ViT segmentation configs (upernet_l2vit_*_512x512_160k_ade20k.py):
        # 0.3 for T, S and B.
        drop_path_rate=0.3,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
