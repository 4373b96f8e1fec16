#!/usr/bin/env python
"""Train a segmentation model from an MM config with Lightning (see lightning_modules/cli.py)."""

from lightning_modules.cli import train_main
from lightning_modules.segmentation import SegmentationModule

if __name__ == "__main__":
    train_main(SegmentationModule)
