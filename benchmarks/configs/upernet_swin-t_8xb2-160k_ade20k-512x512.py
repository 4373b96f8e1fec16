# Benchmark comparison model, not a training recipe: the project's UperNet InLine-Swin-T ADE20K
# config with MMSegmentation's own Swin-T (`SwinTransformer`) as the backbone. Everything else
# (UperNet and FCN heads, 512 x 512 test settings, data, schedule, runtime) is inherited, so the
# two models differ only in `model.backbone` (tests/benchmarks/test_task_bench.py checks that).
_base_ = ['../../configs/inline_swin/upernet_inline-swin-t_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        # Swin-T as in mmseg's swin-tiny-patch4-window7 UperNet configs.
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        # The project's segmentation rate (0.3, as Swin's UperNet configs).
        drop_path_rate=0.3,
        patch_norm=True,
        use_abs_pos_embed=False,
        act_cfg=dict(type='GELU'),
        norm_cfg=dict(type='LN', requires_grad=True),
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        with_cp=False,
        init_cfg=None))
