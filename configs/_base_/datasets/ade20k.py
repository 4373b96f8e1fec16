# ADE20K (SceneParse150) in the standard layout:
#   data/ade/ADEChallengeData2016/images/{training,validation}/*.jpg
#   data/ade/ADEChallengeData2016/annotations/{training,validation}/*.png  (0 = other, 1..150)
# `reduce_zero_label` turns "other" into 255 (ignored) and the 150 classes into 0..149.
# mmseg's standard single-scale recipe: random rescale of a 2048 x 512 scale by 0.5-2.0, 512 x 512
# crops, flips and photometric distortion for training; the shorter side resized to 512 for
# testing (the model then runs on the whole image or slides windows, as `model.test_cfg` says).
dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
crop_size = (512, 512)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(2048, 512),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    # A crop that would be >75% one class is re-drawn (up to 10 times).
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    # Labels are loaded after the resize: the metric compares at the original size
    # (the model rescales its prediction to `ori_shape`).
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]

# `batch_size` is per device: the recipes say the total in their names (8xb2 = 16 images).
# The sampler only decides shuffling: Lightning inserts distributed samplers itself and loops
# over the data until `train_cfg.max_iters` (mmseg's InfiniteSampler is not needed).
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
# One image per batch: test images differ in size, and mmseg's test-time preprocessor
# stacks a batch without padding.
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

# mIoU, mAcc and aAcc (percent) over the 150 classes; label 255 is ignored.
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
