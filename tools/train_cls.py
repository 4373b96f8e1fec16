#!/usr/bin/env python
"""Classification through the Lightning CLI (see lightning_modules/classification.py).

    python tools/train_cls.py fit --config configs/classification/inline_swin_tiny.yaml \
        --data.data_dir data/imagenet
    python tools/train_cls.py validate --config configs/classification/inline_swin_tiny.yaml \
        --model.checkpoint pretrained/inline_swin_tiny.pth      # an official release
    python tools/train_cls.py fit --config CONFIG --ckpt_path last         # resume
    python tools/train_cls.py fit --config CONFIG --print_config           # the merged config
"""

from lightning_modules.classification import cli_main

if __name__ == "__main__":
    cli_main()
