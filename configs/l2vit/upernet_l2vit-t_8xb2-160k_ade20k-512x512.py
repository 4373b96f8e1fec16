# UperNet + FCN auxiliary head, L2ViT-T backbone, ADE20K: 512 x 512 crops, 160k iterations at a
# total batch of 16 (8 GPUs x 2 images), AdamW lr 6e-5, wd 0.01, poly with 1500 warm-up
# iterations, as the official upernet_l2vit_tiny_512x512_160k_ade20k.py. Single-scale testing on
# the whole image (shorter side 512).
_base_ = [
    '../_base_/models/upernet_l2vit-t.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k.py',
    '../_base_/seg_runtime.py',
]
