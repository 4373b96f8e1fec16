# 1x schedule: 12 epochs, learning rate x0.1 after epochs 8 and 11, 500-iteration linear warm-up.
# AdamW lr 1e-4 (total batch 16), weight decay 0.05, no decay on norms, biases, position
# embeddings, class tokens, relative position tables and L2ViT's temperatures.
_base_ = './adamw_no_decay.py'

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1)
]

# No clip_grad: children may add dict(max_norm=..., norm_type=2).
optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.05))

# `lr` above is for a total batch of 16 (8 GPUs x 2 images); the training tools' --auto-scale-lr
# scales it linearly to the actual total batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
