"""CUDA side of tools/setup.sh: pick the CUDA toolchain and GPU architectures for mmcv's build.

Run with the venv's Python (torch installed) by tools/setup.sh; not imported by the project.

    prepare  find a system toolkit whose nvcc matches torch's CUDA major version, else install the
             registry's nvidia wheels of torch's exact CUDA version and lay them out as a CUDA_HOME;
             print `NAME=VALUE` lines (CUDA_HOME, TORCH_CUDA_ARCH_LIST, MAX_JOBS) for the shell.
    verify   check that the installed mmcv was compiled with CUDA and, where a GPU is usable, that
             nms and RoIAlign run on it.

Every refusal exits with status 2 and a message saying the reason and the fix, so that set-up never
falls back to a CPU-only mmcv on a machine whose user expects the GPU ops.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# Headers that torch's CUDA headers include (ATen/cuda/CUDAContextLight.h): a toolkit without them
# (a bare nvcc install) cannot build a torch extension.
NEEDED_HEADERS = ("cuda_runtime.h", "cublas_v2.h", "cusparse.h", "cusolverDn.h")
# Extras of NVIDIA's `cuda-toolkit` meta-package that make up a compiler (nvcc pulls crt, nvvm and
# the runtime); the cu13 torch wheels pin that meta-package, so its version is torch's exactly.
TOOLKIT_EXTRAS = "nvcc,cccl"


class SetupError(RuntimeError):
    """A reason set-up cannot build mmcv's CUDA ops, with the fix in the message."""


def fail(message: str) -> None:
    print(f"setup: CUDA build of mmcv not possible.\n{message}", file=sys.stderr)
    sys.exit(2)


def torch_cuda_version() -> tuple[int, int]:
    import torch

    if not torch.version.cuda:
        raise SetupError(
            f"  reason: torch {torch.__version__} in the venv is a CPU-only build, so no CUDA "
            "op can be built against it.\n"
            "  fix: install torch's standard (CUDA) build (requirements/lock.txt pins it), or run "
            "with FORCE_CUDA=0 to build CPU ops only."
        )
    major, minor = torch.version.cuda.split(".")[:2]
    return int(major), int(minor)


def nvcc_version(nvcc: Path) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [str(nvcc), "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+)\.(\d+)", out)
    return (int(found[1]), int(found[2])) if found else None


def toolkit_problem(root: Path, want: tuple[int, int]) -> str | None:
    """Why `root` cannot serve as CUDA_HOME for torch's CUDA `want`; None when it can."""
    nvcc = root / "bin" / "nvcc"
    if not nvcc.is_file():
        return f"no {nvcc}"
    have = nvcc_version(nvcc)
    if have is None:
        return f"{nvcc} --version did not run"
    if have[0] != want[0]:
        return f"nvcc is CUDA {have[0]}.{have[1]}, torch is CUDA {want[0]}.{want[1]}"
    missing = [h for h in NEEDED_HEADERS if not (root / "include" / h).is_file()]
    if missing:
        return f"no {', '.join(missing)} under {root / 'include'}"
    return None


def system_candidates(want: tuple[int, int]) -> list[Path]:
    roots: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            roots.append(Path(os.environ[var]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(Path(nvcc).resolve().parent.parent)
    roots.append(Path(f"/usr/local/cuda-{want[0]}.{want[1]}"))
    roots += sorted(Path("/usr/local").glob(f"cuda-{want[0]}.*"), reverse=True)
    roots += [Path("/usr/local/cuda"), Path("/opt/cuda")]
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def find_system_toolkit(want: tuple[int, int]) -> tuple[Path | None, list[str]]:
    """The first usable system toolkit and the reasons the others were passed over."""
    passed: list[str] = []
    for root in system_candidates(want):
        if not root.exists():
            continue
        problem = toolkit_problem(root, want)
        if problem is None:
            return root, passed
        passed.append(f"{root}: {problem}")
    return None, passed


def wheel_requirements(want: tuple[int, int]) -> list[str]:
    """Registry requirements for a compiler of exactly torch's CUDA version."""
    try:
        pinned = metadata.version("cuda-toolkit")
    except metadata.PackageNotFoundError:
        pinned = None
    if pinned and pinned.split(".")[:2] == [str(want[0]), str(want[1])]:
        return [f"cuda-toolkit[{TOOLKIT_EXTRAS}]=={pinned}"]
    major, minor = want
    # CUDA 13 wheels dropped the -cuXX suffix; 11.x and 12.x keep it.
    suffix = "" if major >= 13 else f"-cu{major}"
    names = ["nvidia-cuda-nvcc", "nvidia-cuda-runtime", "nvidia-cuda-cccl"]
    if major >= 13:
        names += ["nvidia-cuda-crt", "nvidia-nvvm"]
    return [f"{name}{suffix}=={major}.{minor}.*" for name in names]


def merge_tree(src: Path, dst: Path) -> None:
    """Mirror `src` under `dst` as symlinks to its files; the first tree merged wins a clash."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir() and not path.is_symlink():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists() and not target.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())


def lay_out_home(home: Path, nvidia_roots: list[Path]) -> None:
    """One CUDA_HOME from the nvidia wheels' trees (bin/include/lib/nvvm), shaped as a toolkit.

    torch's extension builder looks for bin/nvcc, include/ and lib64/ (or lib/) under one CUDA_HOME
    and links -lcudart, but the wheels ship libcudart.so.N only and spread headers over several
    packages (cublas, cusparse, ... come with torch's own dependencies).
    """
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    for root in nvidia_roots:
        for part in ("bin", "include", "lib", "nvvm"):
            if (root / part).is_dir():
                merge_tree(root / part, home / part)
    lib = home / "lib"
    if not (lib / "libcudart.so").exists():
        versioned = sorted(lib.glob("libcudart.so.*"))
        if not versioned:
            raise SetupError(f"  reason: the nvidia wheels gave no libcudart.so.* under {lib}")
        (lib / "libcudart.so").symlink_to(versioned[0].resolve())
    (home / "lib64").symlink_to("lib")
    # nvcc's own profile looks under targets/<arch>-linux for headers and libraries.
    target = home / "targets" / "x86_64-linux"
    target.mkdir(parents=True)
    (target / "include").symlink_to(home / "include")
    (target / "lib").symlink_to(home / "lib")


def install_wheel_toolkit(venv: Path, uv: str, want: tuple[int, int]) -> Path:
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    target = venv / "cuda" / "wheels"
    home = venv / "cuda" / "home"
    requirements = wheel_requirements(want)
    print(
        f"setup: CUDA {want[0]}.{want[1]} compiler from the registry's nvidia wheels: "
        f"{' '.join(requirements)}",
        file=sys.stderr,
    )
    cmd = [uv, "pip", "install", "-q", "--target", str(target), *requirements]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        error = (done.stderr.strip()[-1500:] or f"exit status {done.returncode}"
                 if done.returncode else "")
    except OSError as e:
        error = str(e)
    if error:
        raise SetupError(
            f"  reason: installing the CUDA {want[0]}.{want[1]} compiler wheels failed:\n"
            f"    {' '.join(cmd)}\n    {error}\n"
            f"  fix: make the package registry reachable, or install a CUDA {want[0]}.x toolkit "
            "(nvcc, headers, cuBLAS/cuSPARSE/cuSOLVER headers) and set CUDA_HOME to it."
        )
    roots = sorted(p for p in (target / "nvidia").iterdir() if p.is_dir())
    roots += sorted(p for p in (site / "nvidia").iterdir() if p.is_dir())
    lay_out_home(home, roots)
    problem = toolkit_problem(home, want)
    if problem:
        raise SetupError(
            f"  reason: the CUDA_HOME laid out from the nvidia wheels is unusable: {problem}\n"
            f"  fix: install a CUDA {want[0]}.x toolkit and set CUDA_HOME to it."
        )
    return home


def visible_arch_list() -> str | None:
    """Compute capabilities of the visible GPUs ('8.0;9.0'), from torch or else nvidia-smi."""
    import torch

    caps: set[str] = set()
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            caps.add(f"{major}.{minor}")
    elif shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        lines = (line.strip() for line in out.stdout.splitlines())
        caps = {line for line in lines if re.fullmatch(r"\d+\.\d+", line)}
    return ";".join(sorted(caps, key=lambda c: tuple(map(int, c.split("."))))) or None


def driver_problem(want: tuple[int, int]) -> str | None:
    """Why torch cannot use the visible GPU (typically a driver older than torch's CUDA)."""
    import torch

    if torch.cuda.is_available():
        return None
    smi = ""
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
    found = re.search(r"Driver Version:\s*([\d.]+).*?CUDA Version:\s*([\d.]+)", smi)
    if found:
        return (
            f"driver {found[1]} supports CUDA up to {found[2]}, torch needs CUDA "
            f"{want[0]}.{want[1]}"
        )
    return "torch.cuda.is_available() is False although a GPU device is present"


def max_jobs() -> int:
    """Compile jobs: one per core, but about 2 GiB of memory each (nvcc on mmcv's ops)."""
    if os.environ.get("MAX_JOBS"):
        return int(os.environ["MAX_JOBS"])
    cores = len(os.sched_getaffinity(0))
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return cores
    return max(1, min(cores, pages // (2 << 30)))


def prepare(venv: Path, uv: str, source: str, forced: bool) -> list[str]:
    want = torch_cuda_version()
    if not forced:
        problem = driver_problem(want)
        if problem:
            raise SetupError(
                f"  reason: a GPU is visible but torch cannot use it: {problem}.\n"
                "  fix: update the NVIDIA driver to one for that CUDA version; or FORCE_CUDA=1 "
                "(with TORCH_CUDA_ARCH_LIST) to build the CUDA ops anyway; or FORCE_CUDA=0 for "
                "CPU ops only."
            )
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or visible_arch_list()
    if not arch:
        raise SetupError(
            "  reason: FORCE_CUDA=1 but no GPU is visible to tell the architecture to compile "
            "for.\n"
            "  fix: set TORCH_CUDA_ARCH_LIST, e.g. 9.0 (H100/H200), 8.0 (A100), 8.6 (RTX 30xx, "
            "A10), 8.9 (L4, L40, RTX 40xx), 10.0 (B200); several separated by ';'."
        )
    home: Path | None = None
    if source in ("auto", "system"):
        home, passed = find_system_toolkit(want)
        explicit = os.environ.get("CUDA_HOME")
        if explicit and home != Path(explicit):
            # A CUDA_HOME of another CUDA (often set machine-wide) is passed over, loudly.
            reason = next((p for p in passed if p.startswith(f"{Path(explicit)}:")), explicit)
            print(f"setup: CUDA_HOME is not used, it cannot build against torch's CUDA "
                  f"{want[0]}.{want[1]}: {reason}", file=sys.stderr)
        if home is None and source == "system":
            raise SetupError(
                f"  reason: CUDA_TOOLKIT=system but no CUDA {want[0]}.x toolkit was found:\n    "
                + "\n    ".join(passed or ["no candidate directory exists"])
                + "\n  fix: set CUDA_HOME to one, or CUDA_TOOLKIT=auto to use the nvidia wheels."
            )
        for line in passed:
            if not (explicit and line.startswith(f"{Path(explicit)}:")):
                print(f"setup: passed over {line}", file=sys.stderr)
    if home is None:
        home = install_wheel_toolkit(venv, uv, want)
    if shutil.which("g++") is None and shutil.which("c++") is None:
        raise SetupError("  reason: no C++ compiler (g++) for nvcc's host code.\n"
                         "  fix: install g++.")
    return [f"CUDA_HOME={home}", f"TORCH_CUDA_ARCH_LIST={arch}", f"MAX_JOBS={max_jobs()}"]


def verify() -> None:
    import torch
    from mmcv.ops import RoIAlign, get_compiling_cuda_version, nms

    built = get_compiling_cuda_version()
    if not re.fullmatch(r"\d+\.\d+", built):
        raise SetupError(
            f"  reason: the installed mmcv's ops were compiled without CUDA ({built!r}).\n"
            "  fix: run set-up again with FORCE_CUDA=1 and read the build log it names."
        )
    if built.split(".")[0] != torch.version.cuda.split(".")[0]:
        raise SetupError(
            f"  reason: mmcv ops built with CUDA {built}, torch has {torch.version.cuda}")
    if torch.cuda.is_available():
        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30.0]], device="cuda")
        scores = torch.tensor([0.9, 0.8, 0.7], device="cuda")
        _, keep = nms(boxes, scores, 0.5)
        feats = torch.rand(1, 4, 16, 16, device="cuda")
        rois = torch.tensor([[0, 1.0, 1.0, 9.0, 9.0]], device="cuda")
        pooled = RoIAlign((2, 2), 1.0, 2)(feats, rois)
        if keep.tolist() != [0, 2] or pooled.shape != (1, 4, 2, 2):
            raise SetupError("  reason: mmcv's CUDA nms / RoIAlign gave wrong results on the GPU")
        print(f"setup: mmcv CUDA ops (CUDA {built}) ran nms and RoIAlign on "
              f"{torch.cuda.get_device_name()}")
    else:
        print(f"setup: mmcv ops compiled with CUDA {built} (no usable GPU here to run them)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("--venv", type=Path, required=True)
    prep.add_argument("--uv", required=True)
    prep.add_argument("--toolkit", choices=("auto", "system", "wheels"), default="auto")
    prep.add_argument("--forced", action="store_true", help="FORCE_CUDA=1 was given")
    sub.add_parser("verify")
    args = parser.parse_args()
    try:
        if args.cmd == "prepare":
            print("\n".join(prepare(args.venv.resolve(), args.uv, args.toolkit, args.forced)))
        else:
            verify()
    except SetupError as err:
        fail(str(err))


if __name__ == "__main__":
    main()
