"""Fixtures shared by the backbone family tests."""

from collections.abc import Callable

import pytest
import timm
import torch


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def n_params() -> Callable[[torch.nn.Module], int]:
    """Number of parameters of a model."""
    return _count


@pytest.fixture
def meta_params_m() -> Callable[..., float]:
    """Parameters of a registered model in millions, rounded to 2 decimals as the official tables
    give them. Built on the meta device: full-size models cost no memory and no init time."""

    def params_m(name: str, **kwargs) -> float:
        with torch.device("meta"):
            return round(_count(timm.create_model(name, **kwargs)) / 1e6, 2)

    return params_m
