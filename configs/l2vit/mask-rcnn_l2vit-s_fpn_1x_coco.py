# Mask R-CNN + FPN, L2ViT-S backbone, 1x schedule (12 epochs), single-scale training.
_base_ = './mask-rcnn_l2vit-t_fpn_1x_coco.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/ChuanyangZheng/L2ViT); nothing is downloaded by these configs.
pretrained = 'pretrained/l2vit_s.pth'

model = dict(
    backbone=dict(
        arch='small',
        # As the official L2ViT detection config maskrcnn_1x_l2vit_v0_small_coco.py.
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
