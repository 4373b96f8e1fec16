# Runtime settings of the segmentation configs (the detection ones use default_runtime.py).
# Training runs through the Lightning tools (tools/train_seg.py), which own checkpointing,
# logging and resuming; these keys keep the configs valid for mmseg's own tools and mmengine's
# Runner. `default_scope` also tells the Lightning bridge and tools/infer.py the task.
# `default_hooks` (logging and checkpoint intervals) live in the schedules, as in mmseg.
default_scope = 'mmseg'

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)

log_level = 'INFO'
load_from = None
resume = False
