"""Demo data shared by the bad-input and reliability tests (a module may define its own
``demo`` / ``data`` fixture, which then takes precedence)."""

import shutil
from pathlib import Path

import pytest

from lightning_modules.demo_data import make_ade_demo, make_coco_demo, make_imagenet_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """All three demo datasets, generated once per test module."""
    root = tmp_path_factory.mktemp("demo")
    make_ade_demo(root, num_train=4, num_val=2, seed=1)
    make_coco_demo(root, num_train=4, num_val=2, seed=1)
    make_imagenet_demo(root, num_train=8, num_val=4, side_range=(40, 48), seed=3)
    return root


@pytest.fixture
def data(demo, tmp_path) -> Path:
    """A copy of the demo data that a test may break."""
    shutil.copytree(demo, tmp_path / "data")
    return tmp_path / "data"
