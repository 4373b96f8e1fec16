#!/usr/bin/env python
"""Print the segmentation metrics (mIoU, mAcc, aAcc) of a checkpoint on the config's test set."""

from lightning_modules.cli import test_main
from lightning_modules.segmentation import SegmentationModule

if __name__ == "__main__":
    test_main(SegmentationModule)
