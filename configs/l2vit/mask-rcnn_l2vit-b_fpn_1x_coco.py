# Mask R-CNN + FPN, L2ViT-B backbone, 1x schedule (12 epochs), single-scale training.
_base_ = './mask-rcnn_l2vit-t_fpn_1x_coco.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/ChuanyangZheng/L2ViT); nothing is downloaded by these configs.
pretrained = 'pretrained/l2vit_b.pth'

model = dict(
    backbone=dict(
        arch='base',
        # As the official L2ViT detection config maskrcnn_1x_l2vit_v0_base_coco.py.
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
