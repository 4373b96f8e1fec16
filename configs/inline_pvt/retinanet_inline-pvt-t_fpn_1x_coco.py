# RetinaNet + FPN, InLine-PVT-T backbone, 1x schedule (12 epochs), single-scale training.
_base_ = [
    '../_base_/models/retinanet_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine); nothing is downloaded by these configs.
# Set `init_cfg=None` in `model.backbone` to train from scratch.
pretrained = 'pretrained/inline_pvt_t.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLinePVTBackbone',
        arch='tiny',
        out_indices=(1, 2, 3),
        # Detection drop-path rates follow the sister repos' detection configs (InLine ships
        # none): 0.1 for every PVT size in whai362/PVT's detection code.
        drop_path_rate=0.1,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # Strides 8/16/32 only; see _base_/models/retinanet_fpn.py.
    neck=dict(in_channels=[128, 320, 512]))
