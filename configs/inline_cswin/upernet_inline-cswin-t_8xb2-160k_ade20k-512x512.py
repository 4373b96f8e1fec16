# UperNet + FCN auxiliary head, InLine-CSwin-T backbone, ADE20K: 512 x 512 crops, 160k iterations
# at a total batch of 16 (8 GPUs x 2 images), AdamW lr 6e-5, wd 0.01, poly with 1500 warm-up
# iterations. Single-scale testing on the whole image (shorter side 512).
_base_ = [
    '../_base_/models/upernet_inline-cswin-t.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k.py',
    '../_base_/seg_runtime.py',
]
