"""Known incompatibilities of the pinned stack, handled here and nowhere else.

Nothing is patched at import: the entry points that reach mmengine's loader (``cli.train_main`` /
``test_main``, ``inference.infer``) call :func:`install` explicitly.

1. torch >= 2.6 loads with ``weights_only=True`` by default; mmengine 0.10.7 calls ``torch.load``
   without the argument, so a checkpoint whose ``meta`` holds numpy values fails to load in
   ``load_checkpoint`` / ``init_cfg=Pretrained`` / ``load_from``. We replace mmengine's local-file
   loader by one that keeps ``weights_only=True`` and allow-lists only numpy scalars and arrays.
   Checkpoints written by mmengine's Runner also pickle ``HistoryBuffer``, whose unpickling needs
   ``builtins.getattr`` (that would undo what weights_only protects), so those need the explicit
   opt-in ``LAV_TRUSTED_CHECKPOINTS=1``; this project resumes through Lightning's checkpoints.
2. mmdet 3.3 and mmsegmentation 1.2.2 require mmcv >= 2.0.0rc4, < 2.2.0 (tools/setup.sh pins
   2.1.0, built from source with ops); ``check_mm_versions`` says so clearly instead of failing
   deep inside an import.
"""

from __future__ import annotations

import os

from backbones._helpers import safe_torch_load

MMCV_RANGE = ("2.0.0rc4", "2.2.0")


def _load_from_local(filename: str, map_location=None):
    # The one safe loader of the project (backbones._helpers), shared with every other loader.
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"checkpoint {filename} does not exist")
    return safe_torch_load(filename, map_location=map_location)


def check_mm_versions() -> None:
    """Fail early, with the fix, when the installed mmcv is outside what mmdet/mmseg accept."""
    import mmcv
    from packaging.version import parse

    lo, hi = MMCV_RANGE
    if not parse(lo) <= parse(mmcv.__version__) < parse(hi):
        raise ImportError(f"mmcv {mmcv.__version__} is installed, but mmdet 3.3 / mmsegmentation "
                          f"1.2.2 need mmcv >= {lo}, < {hi}; run `make setup` (builds 2.1.0)")


_installed = False


def install() -> None:
    """Apply fix 1 (mmengine's local checkpoint loader); once per process."""
    global _installed
    if _installed:
        return
    from mmengine.runner.checkpoint import CheckpointLoader

    # force=True: the prefix '' is mmengine's own local loader, which this replaces.
    CheckpointLoader.register_scheme(prefixes="", loader=_load_from_local, force=True)
    _installed = True
