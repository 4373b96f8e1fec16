# Mask R-CNN + FPN, InLine-Swin-S backbone, 1x schedule (12 epochs), single-scale training.
_base_ = './mask-rcnn_inline-swin-t_fpn_1x_coco.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
pretrained = 'pretrained/inline_swin_s.pth'

model = dict(
    backbone=dict(
        arch='small',
        # Sister repo Swin-Transformer-Object-Detection: Swin-S Mask R-CNN 0.2.
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
