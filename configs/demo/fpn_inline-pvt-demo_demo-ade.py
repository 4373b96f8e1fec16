# The segmentation demo: Semantic FPN on a small InLine-PVT (one InLine block per stage, half
# width, head dim 32), trained from scratch on the generated ADE20K-style scenes
# (tools/make_demo_data.py -> data/demo/ade/ADEChallengeData2016/) in about a minute on 2 CPU
# cores. `make demo-seg` runs it end to end: train, test (mIoU), draw predictions.
_base_ = [
    '../_base_/models/fpn_inline-pvt-t.py',
    '../_base_/schedules/schedule_40k.py',
    '../_base_/seg_runtime.py',
]

# Same as lightning_modules.demo_data.DEMO_SEG_CLASSES (a test keeps them equal).
classes = ('sky', 'grass', 'building', 'ball')
# Colours unlike the scenes' own (blue sky, green grass, red balls), so that overlays read well.
palette = [[255, 220, 0], [160, 0, 255], [0, 200, 255], [0, 255, 80]]
crop_size = (128, 128)
width = 64  # FPN / head width, reduced from 256 / 128 for CPU speed
norm_cfg = dict(type='BN', requires_grad=True)  # one process: no SyncBN

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='tiny',
        embed_dims=(32, 64, 128, 256),
        num_heads=(1, 2, 4, 8),
        mlp_ratios=(4, 4, 4, 4),
        depths=(1, 1, 1, 1),
        img_size=crop_size[0],
        drop_path_rate=0.0,
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=width),
    decode_head=dict(
        in_channels=[width] * 4,
        channels=width,
        dropout_ratio=0.0,
        num_classes=len(classes),
        norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))

# The generated scenes in ADE20K's layout and label convention (0 = other -> ignored, 1..4).
# BaseSegDataset, not ADE20KDataset: given other class names, ADE20KDataset would remap labels
# from its own 150-class numbering (sky, grass, building and ball are ADE20K names too).
data_root = 'data/demo/ade/ADEChallengeData2016'
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True,
    metainfo=dict(classes=classes, palette=palette))
# Images are 128-192 px a side: rescale around that, then 128 x 128 crops. No photometric
# distortion: the generator already varies colours, exposure and noise per image.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(192, 160), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
# Whole images at their own size (about the training scale).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        **dataset,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        **dataset,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# From scratch: a higher lr than the 40k recipe, a short warm-up, poly decay; one validation
# at the end.
max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=0.9, by_epoch=False, begin=50, end=max_iters),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.01))
default_hooks = dict(logger=dict(interval=20))
