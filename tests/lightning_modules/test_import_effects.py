"""Importing the project has no side effects beyond registration: the demo-data generator
imports no torch, and no module patches a third-party object until an entry point asks."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_the_demo_data_generator_imports_no_torch():
    out = run_python("import sys, lightning_modules.demo_data; "
                     "print(sorted(m for m in ('torch', 'timm', 'mmengine', 'lightning') "
                     "if m in sys.modules))")
    assert out == "[]"


def test_mmengine_checkpoint_loader_is_patched_only_by_install():
    code = """
import importlib, pkgutil
from mmengine.runner import checkpoint as ck
own = ck.CheckpointLoader._schemes['']
import backbones, heads, lightning_modules
for pkg in (backbones, heads, lightning_modules):
    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f'{pkg.__name__}.{m.name}')
print(ck.CheckpointLoader._schemes[''] is own)
from lightning_modules import compat
compat.install()
compat.install()
print(ck.CheckpointLoader._schemes[''] is compat._load_from_local)
"""
    assert run_python(code).splitlines()[-2:] == ["True", "True"]
