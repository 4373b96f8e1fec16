# Benchmark comparison model, not a training recipe: the project's Mask R-CNN InLine-Swin-T 1x
# COCO config with MMDetection's own Swin-T (`SwinTransformer`) as the backbone. Everything else
# (FPN, RPN and RoI heads, their train / test settings, data, schedule, runtime) is inherited, so
# the two models differ only in `model.backbone` (tests/benchmarks/test_task_bench.py checks that).
_base_ = ['../../configs/inline_swin/mask-rcnn_inline-swin-t_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        # Swin-T as in mmdet's mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py.
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        # The project's detection rate (0.2, as Swin's Mask R-CNN configs).
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=None))
