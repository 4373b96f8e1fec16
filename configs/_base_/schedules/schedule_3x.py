# 3x schedule: 36 epochs, learning rate x0.1 after epochs 27 and 33, 500-iteration linear warm-up.
# AdamW lr 1e-4 (total batch 16), weight decay 0.05, no decay on norms, biases, position
# embeddings, class tokens, relative position tables and L2ViT's temperatures.
max_epochs = 36
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
        milestones=[27, 33],
        gamma=0.1)
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    # `custom_keys` match by substring of the parameter name: 'pos_embed' also covers PVT's
    # pos_embed1..4 and Swin's absolute_pos_embed.
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'absolute_pos_embed': dict(decay_mult=0.),
            'temperature': dict(decay_mult=0.),
        }),
)  # no clip_grad: children may add dict(max_norm=..., norm_type=2)

# `lr` above is for a total batch of 16 (8 GPUs x 2 images); set `enable=True` (or the
# trainer's equivalent) to scale it linearly to the actual total batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
