# COCO instance segmentation with the Swin 3x multi-scale augmentation (mmdet's swin
# `ms-crop-3x`, from DETR / Sparse R-CNN): a random short side in 480..800 step 32, or, with
# probability 1/2, a short side in {400, 500, 600}, a random 384..600 crop and then the 480..800
# resize. Validation and test as in coco_instance.py.
_base_ = './coco_instance.py'

ms_scales = [(1333, 480 + 32 * i) for i in range(11)]  # short side 480, 512, ..., 800
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(1333, 400), (1333, 500), (1333, 600)],
                    keep_ratio=True),
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
