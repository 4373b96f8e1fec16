#!/usr/bin/env python
"""Print the COCO metrics of a detection checkpoint on the config's test set."""

from lightning_modules.cli import test_main
from lightning_modules.detection import DetectionModule

if __name__ == "__main__":
    test_main(DetectionModule)
