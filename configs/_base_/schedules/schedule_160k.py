# 160k-iteration UperNet schedule (Swin / CSwin / L2ViT segmentation recipes): AdamW lr 6e-5
# (total batch 16), weight decay 0.01, linear warm-up over 1500 iterations from 1e-6 x lr, then
# poly decay (power 1) to 0. No weight decay on norms, biases, position embeddings, class
# tokens, relative position tables and L2ViT's temperatures, as in the detection schedules.
_base_ = './adamw_no_decay.py'

max_iters = 160000
warmup_iters = 1500
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    # The Lightning tools take their logging interval from here (log_every_n_steps).
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))

param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-6,
        by_epoch=False,
        begin=0,
        end=warmup_iters),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters),
]

optim_wrapper = dict(optimizer=dict(lr=0.00006, weight_decay=0.01))

# `lr` above is for a total batch of 16 (8 GPUs x 2 images); the training tools' --auto-scale-lr
# scales it linearly to the actual total batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
