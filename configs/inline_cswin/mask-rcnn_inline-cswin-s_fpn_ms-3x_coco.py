# Mask R-CNN + FPN, InLine-CSwin-S backbone, 3x schedule (36 epochs), Swin multi-scale training.
_base_ = './mask-rcnn_inline-cswin-t_fpn_ms-3x_coco.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
pretrained = 'pretrained/inline_cswin_s.pth'

model = dict(
    backbone=dict(
        arch='small',
        # CSwin released no detection configs: T 0.2 / S 0.3, Swin-style (see the T config).
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
