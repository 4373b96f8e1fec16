# UperNet + FCN auxiliary head with the InLine-CSwin-T backbone: the model shared by the family's
# ADE20K configs (which add data, schedule and runtime).
_base_ = './upernet_fcn-aux.py'

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
# Set `init_cfg=None` in `model.backbone` to train from scratch.
pretrained = 'pretrained/inline_cswin_t.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLineCSwinBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # Segmentation drop-path rates follow CSwin's own UperNet configs (InLine ships none):
        # T 0.3, S 0.4.
        drop_path_rate=0.3,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
