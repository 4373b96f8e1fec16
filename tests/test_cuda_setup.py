"""tools/cuda_setup.py (the CUDA side of tools/setup.sh) on fake toolkits: which one is taken, the
CUDA_HOME laid out from wheel trees, the registry requirements, the refusals."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cuda_setup", ROOT / "tools" / "cuda_setup.py")
cuda_setup = importlib.util.module_from_spec(_spec)
sys.modules["cuda_setup"] = cuda_setup
_spec.loader.exec_module(cuda_setup)


def fake_toolkit(root: Path, release: str = "13.0", headers=cuda_setup.NEEDED_HEADERS) -> Path:
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                    f"echo 'Cuda compilation tools, release {release}, V{release}.88'\n")
    nvcc.chmod(0o755)
    (root / "include").mkdir()
    for h in headers:
        (root / "include" / h).write_text("")
    return root


def test_toolkit_problem_checks_major_version_and_headers(tmp_path):
    good = fake_toolkit(tmp_path / "good")
    assert cuda_setup.nvcc_version(good / "bin" / "nvcc") == (13, 0)
    assert cuda_setup.toolkit_problem(good, (13, 0)) is None
    assert cuda_setup.toolkit_problem(good, (13, 2)) is None  # torch's rule: same major
    assert "nvcc is CUDA 13.0, torch is CUDA 12.4" in cuda_setup.toolkit_problem(good, (12, 4))
    bare = fake_toolkit(tmp_path / "bare", headers=("cuda_runtime.h",))
    assert "cublas_v2.h" in cuda_setup.toolkit_problem(bare, (13, 0))
    assert "no " in cuda_setup.toolkit_problem(tmp_path / "missing", (13, 0))


def test_find_system_toolkit_takes_cuda_home_and_says_why_others_were_passed(
        tmp_path, monkeypatch):
    old = fake_toolkit(tmp_path / "cuda-12.4", release="12.4")
    monkeypatch.setenv("CUDA_HOME", str(old))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(cuda_setup, "system_candidates", lambda want: [old])
    home, passed = cuda_setup.find_system_toolkit((13, 0))
    assert home is None and passed == [f"{old}: nvcc is CUDA 12.4, torch is CUDA 13.0"]
    new = fake_toolkit(tmp_path / "cuda-13.0")
    monkeypatch.setattr(cuda_setup, "system_candidates", lambda want: [old, new])
    assert cuda_setup.find_system_toolkit((13, 0))[0] == new
    # the real candidate list starts with CUDA_HOME
    assert cuda_setup.system_candidates((13, 0))[0] == old


def test_lay_out_home_merges_wheel_trees_into_one_cuda_home(tmp_path):
    nvcc_tree = fake_toolkit(tmp_path / "wheels" / "cu13", headers=("cuda_runtime.h",))
    (nvcc_tree / "lib").mkdir()
    (nvcc_tree / "lib" / "libcudart.so.13").write_text("compiler's")
    (nvcc_tree / "nvvm" / "bin").mkdir(parents=True)
    (nvcc_tree / "nvvm" / "bin" / "cicc").write_text("")
    torch_tree = tmp_path / "site" / "cu13"
    (torch_tree / "include" / "crt").mkdir(parents=True)
    for h in ("cublas_v2.h", "cusparse.h", "cusolverDn.h", "cuda_runtime.h", "crt/host.h"):
        (torch_tree / "include" / h).write_text("torch's")
    home = tmp_path / "home"
    cuda_setup.lay_out_home(home, [nvcc_tree, torch_tree])
    assert cuda_setup.toolkit_problem(home, (13, 0)) is None
    # first tree wins a clash; files are links into the trees, folders real
    assert (home / "include" / "cuda_runtime.h").resolve() == \
        (nvcc_tree / "include" / "cuda_runtime.h").resolve()
    assert (home / "include" / "crt" / "host.h").read_text() == "torch's"
    assert (home / "lib" / "libcudart.so").read_text() == "compiler's"  # torch links -lcudart
    assert (home / "lib64" / "libcudart.so").exists()
    assert (home / "nvvm" / "bin" / "cicc").exists()
    assert (home / "targets" / "x86_64-linux" / "include" / "cublas_v2.h").exists()
    cuda_setup.lay_out_home(home, [nvcc_tree, torch_tree])  # again: rebuilt, not merged twice


def test_lay_out_home_without_cudart_is_refused(tmp_path):
    tree = fake_toolkit(tmp_path / "cu13")
    with pytest.raises(cuda_setup.SetupError, match="libcudart"):
        cuda_setup.lay_out_home(tmp_path / "home", [tree])


def test_wheel_requirements_follow_torchs_cuda(monkeypatch):
    monkeypatch.setattr(cuda_setup.metadata, "version", lambda name: "13.0.3.0")
    assert cuda_setup.wheel_requirements((13, 0)) == ["cuda-toolkit[nvcc,cccl]==13.0.3.0"]
    reqs = cuda_setup.wheel_requirements((13, 2))  # the pinned meta-package is of another 13.x
    assert "nvidia-cuda-nvcc==13.2.*" in reqs and "nvidia-nvvm==13.2.*" in reqs
    assert cuda_setup.wheel_requirements((12, 8)) == [
        "nvidia-cuda-nvcc-cu12==12.8.*", "nvidia-cuda-runtime-cu12==12.8.*",
        "nvidia-cuda-cccl-cu12==12.8.*"]


def test_refusals_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(cuda_setup, "visible_arch_list", lambda: None)
    with pytest.raises(cuda_setup.SetupError, match="set TORCH_CUDA_ARCH_LIST"):
        cuda_setup.prepare(tmp_path, "uv", "auto", forced=True)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setattr(cuda_setup, "find_system_toolkit", lambda want: (None, ["x: no nvcc"]))
    with pytest.raises(cuda_setup.SetupError, match="CUDA_TOOLKIT=auto"):
        cuda_setup.prepare(tmp_path, "uv", "system", forced=True)
    monkeypatch.setattr(cuda_setup, "driver_problem", lambda want: "driver 535 supports 12.2")
    with pytest.raises(cuda_setup.SetupError, match="update the NVIDIA driver"):
        cuda_setup.prepare(tmp_path, "uv", "auto", forced=False)
    monkeypatch.setenv("MAX_JOBS", "3")
    assert cuda_setup.max_jobs() == 3
