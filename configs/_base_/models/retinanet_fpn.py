# RetinaNet + FPN (256 channels, 5 levels, P3-P7), mmdet 3.x's standard head and losses, with the
# backbone left to the child configs (the one here is a placeholder: an InLine-PVT-T with no
# weights, so that this file alone still builds).
#
# The backbone returns only strides 8/16/32 (`out_indices=(1, 2, 3)`) and the FPN starts at its
# first input (`start_level=0`): the same network as mmdet's 4-input `start_level=1` form, but
# with no stride-4 output whose parameters (e.g. a per-output norm) would get no gradient, which
# DDP rejects unless `find_unused_parameters=True`. This is also how the official L2ViT RetinaNet
# configs are written. Children set `neck=dict(in_channels=[...])` to the widths of stages 1-3.
#
# Nothing is downloaded: no `torchvision://` / `open-mmlab://` initialisation anywhere.

# Registers InLineDeiT / InLinePVT / InLineSwin / InLineCSwin / L2ViT in mmdet's MODELS registry.
custom_imports = dict(imports=['heads.mm_backbones', 'heads.mm_necks'], allow_failed_imports=False)

model = dict(
    type='RetinaNet',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,
        pad_mask=True),
    backbone=dict(  # placeholder: replaced by every child config
        type='InLinePVTBackbone',
        arch='tiny',
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=None),
    neck=dict(
        type='FPN',
        in_channels=[128, 320, 512],
        out_channels=256,
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5),
    bbox_head=dict(
        type='RetinaHead',
        num_classes=80,
        in_channels=256,
        stacked_convs=4,
        feat_channels=256,
        anchor_generator=dict(
            type='AnchorGenerator',
            octave_base_scale=4,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    # model training and testing settings
    train_cfg=dict(
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=0.5,
            neg_iou_thr=0.4,
            min_pos_iou=0,
            ignore_iof_thr=-1),
        sampler=dict(
            type='PseudoSampler'),  # Focal loss should use PseudoSampler
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.5),
        max_per_img=100))
