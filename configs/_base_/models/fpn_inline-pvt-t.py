# Semantic FPN (Kirillov et al. 2019) with the InLine-PVT-T backbone, as the PVT paper sets it up
# for ADE20K: FPN neck with 256 channels and 4 outputs (strides 4-32), FPNHead with 128
# channels merging them at stride 4; no auxiliary head. Shared by the family's ADE20K configs.
#
# Nothing is downloaded: the backbone loads ImageNet weights from a local file through
# `init_cfg=dict(type='Pretrained', ...)`.

# Registers InLineDeiT / InLinePVT / InLineSwin / InLineCSwin / L2ViT in mmseg's MODELS registry.
custom_imports = dict(imports=['heads.mm_backbones', 'heads.mm_necks'], allow_failed_imports=False)

# ImageNet-1K weights: a local file that you download yourself from the official release
# (github.com/LeapLabTHU/InLine). Set `init_cfg=None` in `model.backbone` to train from scratch.
pretrained = 'pretrained/inline_pvt_t.pth'

# SyncBN as in the multi-GPU recipes; the Lightning module reverts it to BN in single-process
# and CPU runs (as mmengine's Runner does when not distributed).
norm_cfg = dict(type='SyncBN', requires_grad=True)

model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        # Training crops smaller than this are padded to it (labels with 255, ignored).
        # Keep it equal to the dataset's crop_size.
        size=(512, 512),
        seg_pad_val=255),
    pretrained=None,
    backbone=dict(
        type='InLinePVTBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # As PVT's Semantic FPN backbones (whai362/PVT segmentation): 0.1 for every size.
        drop_path_rate=0.1,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        type='FPN',
        in_channels=[64, 128, 320, 512],
        out_channels=256,
        num_outs=4),
    decode_head=dict(
        type='FPNHead',
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    # 'whole': the network sees the entire (test-resized) image at once. For inputs far larger
    # than the training crop use dict(mode='slide', crop_size=(512, 512), stride=(341, 341)).
    test_cfg=dict(mode='whole'))
