# The demo: Mask R-CNN on a small InLine-PVT (one block per stage, half width, head dim 32),
# trained from scratch on the generated data (tools/make_demo_data.py -> data/demo/coco/) in a few
# minutes on 2 CPU cores. `make demo` runs it end to end.
_base_ = [
    '../_base_/models/mask-rcnn_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]

# Same as lightning_modules.demo_data.DEMO_DET_CLASSES (a test keeps them equal).
classes = ('circle', 'rectangle', 'triangle', 'star')
width = 64  # FPN / head width, reduced from 256 for CPU speed

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLinePVTBackbone',
        arch='tiny',
        embed_dims=(32, 64, 128, 256),
        num_heads=(1, 2, 4, 8),
        mlp_ratios=(4, 4, 4, 4),
        depths=(1, 1, 1, 1),
        img_size=192,
        drop_path_rate=0.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_convs=2,
                       num_classes=len(classes))),
    # Fewer RoIs per image: RoIAlign and the heads dominate a CPU step.
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=50)))

data_root = 'data/demo/coco/'
metainfo = dict(classes=classes)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(192, 192), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(192, 192), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=2,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline,
                 filter_cfg=dict(filter_empty_gt=True, min_size=4)))
val_dataloader = dict(
    batch_size=4, num_workers=2,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# From scratch on 120 images: more epochs than 1x, and AdamW lr 3e-4 (1e-3 diverges here: a
# single batch cannot even be overfitted at 1e-3, while 3e-4 fits it steadily).
max_epochs = 32
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[26, 30],
         gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=3e-4, weight_decay=0.05), clip_grad=dict(max_norm=10.0))
default_hooks = dict(logger=dict(interval=10))
