# UperNet with an FCN auxiliary head: mmseg 1.x's standard ADE20K segmentor (UPerHead with 512
# channels and pyramid pooling at scales 1, 2, 3, 6 over the four backbone levels; FCNHead with
# 256 channels on level 2, loss weight 0.4, used in training only). The backbone here is a
# placeholder (InLine-Swin-T with no weights, so that this file alone builds): the family bases
# upernet_{inline-swin,inline-cswin,l2vit}-t.py replace it with `_delete_=True` and set the
# heads' `in_channels` to the backbone's per-stage widths.
#
# Nothing is downloaded: the backbones load ImageNet weights from local files through
# `init_cfg=dict(type='Pretrained', ...)`.

# Registers InLineDeiT / InLinePVT / InLineSwin / InLineCSwin / L2ViT in mmseg's MODELS registry.
custom_imports = dict(imports=['heads.mm_backbones', 'heads.mm_necks'], allow_failed_imports=False)

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
        # Training crops smaller than this (small images) are padded to it; padded label
        # pixels are 255 and ignored by the loss. Keep it equal to the dataset's crop_size.
        size=(512, 512),
        seg_pad_val=255),
    pretrained=None,
    backbone=dict(  # placeholder: replaced by every family base
        type='InLineSwinBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        frozen_stages=-1,
        with_cp=False,
        init_cfg=None),
    decode_head=dict(
        type='UPerHead',
        in_channels=[96, 192, 384, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # 'whole': the network sees the entire (test-resized) image at once. For inputs far larger
    # than the training crop use dict(mode='slide', crop_size=(512, 512), stride=(341, 341)).
    test_cfg=dict(mode='whole'))
