# Semantic FPN, InLine-PVT-T backbone, ADE20K: 512 x 512 crops, 40k iterations at a total batch of
# 16 (4 GPUs x 4 images), AdamW lr 1e-4, wd 1e-4, poly (power 0.9), as the PVT paper's ADE20K
# recipe. Single-scale testing on the whole image (shorter side 512).
_base_ = [
    '../_base_/models/fpn_inline-pvt-t.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_40k.py',
    '../_base_/seg_runtime.py',
]

train_dataloader = dict(batch_size=4)
