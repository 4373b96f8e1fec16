"""What the detection and segmentation config tests share: reading configs as written, the
shipped configs of a toolbox scope, the names that map config file names to backbones, and
building their models in this one process."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from mmengine.config import Config

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"

FAMILY_TYPE = {"inline-swin": "InLineSwinBackbone", "inline-pvt": "InLinePVTBackbone",
               "inline-cswin": "InLineCSwinBackbone", "inline-deit": "InLineDeiTBackbone",
               "l2vit": "L2ViTBackbone"}
OUR_BACKBONES = set(FAMILY_TYPE.values())
FAMILY_DIR = {"inline-swin": "inline_swin", "inline-pvt": "inline_pvt",
              "inline-cswin": "inline_cswin", "inline-deit": "inline_deit", "l2vit": "l2vit"}
SIZE_ARCH = {"t": "tiny", "s": "small", "m": "medium", "l": "large", "b": "base"}


def read_config(path: Path) -> Config:
    """The config as written, without importing its ``custom_imports`` (no toolbox needed)."""
    return Config.fromfile(str(path), import_custom_modules=False)


def shipped_configs(scope: str) -> list[Path]:
    """Every config outside ``_base_`` whose ``default_scope`` is ``scope``; an unreadable one is
    kept in every list, so that a test reports it."""
    def scope_of(path: Path) -> str | None:
        try:
            return read_config(path).get("default_scope")
        except Exception:
            return scope
    return sorted(p for p in CONFIG_ROOT.rglob("*.py")
                  if "_base_" not in p.parts and scope_of(p) == scope)


def config_ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CONFIG_ROOT).with_suffix("")) for p in paths]


def config_strings(obj) -> Iterator[str]:
    """Every string in a (nested) config."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from config_strings(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from config_strings(v)


def sync_bn_to_bn(obj):
    """Single-process runs cannot use SyncBN: replace it everywhere in a (nested) config."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "type" and v in ("SyncBN", "MMSyncBN"):
                obj[k] = "BN"
            else:
                sync_bn_to_bn(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            sync_bn_to_bn(v)
    return obj


def use_toolbox(scope: str) -> None:
    """``scope`` ('mmdet' or 'mmseg', whose models need mmcv's compiled ops), our backbone
    registrations, and ``scope`` as the default registry scope."""
    pytest.importorskip("mmcv.ops", reason="mmcv with compiled ops is not installed")
    pytest.importorskip(f"{scope}.models")
    import heads.mm_backbones  # noqa: F401  (registers the backbones)

    importlib.import_module(f"{scope}.utils").register_all_modules(init_default_scope=True)
