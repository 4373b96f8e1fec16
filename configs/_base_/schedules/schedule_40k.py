# 40k-iteration Semantic FPN schedule of the PVT paper (InLine ships no segmentation recipe):
# AdamW lr 1e-4 (total batch 16), weight decay 1e-4, poly decay (power 0.9) to 0 with no
# warm-up. (whai362/PVT's code runs the same number of images as 8 GPUs x 4 for 40k iterations
# at lr 2e-4.) No weight decay on norms, biases, position embeddings, class tokens, relative
# position tables and temperatures, as in the detection schedules.
_base_ = './adamw_no_decay.py'

max_iters = 40000
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    # The Lightning tools take their logging interval from here (log_every_n_steps).
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))

param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=0.9,
        by_epoch=False,
        begin=0,
        end=max_iters),
]

optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.0001))

# `lr` above is for a total batch of 16 (4 GPUs x 4 images).
auto_scale_lr = dict(enable=False, base_batch_size=16)
