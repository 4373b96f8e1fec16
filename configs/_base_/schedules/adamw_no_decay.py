# AdamW with the parameter groups every recipe here uses: no weight decay on norms, biases,
# position embeddings, class tokens, relative position tables and L2ViT's temperatures. The
# schedules inherit it and set lr and weight decay.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', betas=(0.9, 0.999)),
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
)
