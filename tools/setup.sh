#!/usr/bin/env bash
# One-command set-up of .venv/ from requirements/lock.txt. Idempotent: a stamp holding the hash of
# the inputs makes a second run a no-op, and uv's cache keeps the built mmcv wheel between runs.
#
# Why uv and not pip: pip on these machines prefers a local CPU-only torch wheel, beside which
# torchvision 0.28 fails at import (its nms fake kernel); uv resolves the registry's standard builds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=$(realpath -m "${VENV:-.venv}")   # VENV=DIR sets up another venv (e.g. to try a CUDA build)
UV_VERSION=0.13.8
MMCV_VERSION=2.1.0        # mmdet 3.3 / mmseg 1.2.2 require mmcv < 2.2; 2.1.0 is source-only
MMDET_VERSION=3.3.0
MMSEG_VERSION=1.2.2

# mmcv's ops: CUDA where a GPU is visible (or FORCE_CUDA=1), CPU where none is (or FORCE_CUDA=0).
gpu_visible() {
    { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; } ||
        compgen -G '/dev/nvidia[0-9]*' >/dev/null
}
case "${FORCE_CUDA:-}" in
    1) ops=cuda ;;
    0) ops=cpu ;;
    *) if gpu_visible; then ops=cuda; else ops=cpu; fi ;;
esac
build_key=$ops
[[ $ops == cpu ]] || build_key="cuda ${TORCH_CUDA_ARCH_LIST:-visible} ${CUDA_TOOLKIT:-auto} ${CUDA_HOME:-}"

stamp=$VENV/.setup-stamp
want=$( (cat requirements/lock.txt tools/setup.sh tools/cuda_setup.py setup.cfg pyproject.toml
         echo "$build_key") | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup: .venv is up to date"
    exit 0
fi

start=$SECONDS
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
export VIRTUAL_ENV=$VENV
uv=("$VENV/bin/uv" pip)

echo "setup: locked dependencies (torch, torchvision, lightning, timm, mmengine, ...)"
"${uv[@]}" install -q -r requirements/lock.txt

# mmcv's compiled ops must be built against the torch just installed: no build isolation.
if [[ $ops == cpu ]]; then
    # ~13-20 min on 2 cores the first time, cached by uv after. No GPU may leak into the build:
    # mmcv's setup.py switches to CUDA whenever torch sees one.
    echo "setup: mmcv==$MMCV_VERSION with CPU ops (built from source on the first run; cached afterwards)"
    # A venv set up for CUDA before holds CUDA mmcv under the same version: uninstall it (not
    # --reinstall-package, which also refreshes uv's cache and so rebuilds the cached wheel).
    [[ ! -d $VENV/cuda ]] || { "${uv[@]}" uninstall -q mmcv || true; rm -rf "$VENV/cuda"; }
    CUDA_VISIBLE_DEVICES="" FORCE_CUDA=0 MMCV_WITH_OPS=1 \
        "${uv[@]}" install -q --no-build-isolation --no-deps "mmcv==$MMCV_VERSION"
else
    # Toolchain (a system CUDA_HOME of torch's CUDA major version, else the registry's nvidia
    # wheels of torch's exact version), architectures and job count; exits 2 with the reason and
    # the fix where the build cannot be done, rather than building CPU ops silently.
    cuda_env=$("$VENV/bin/python" tools/cuda_setup.py prepare --venv "$VENV" --uv "$VENV/bin/uv" \
        --toolkit "${CUDA_TOOLKIT:-auto}" $([[ ${FORCE_CUDA:-} == 1 ]] && echo --forced)) || exit $?
    while IFS='=' read -r name value; do export "$name=$value"; done <<< "$cuda_env"
    # A uv cache of its own per toolchain and architecture: the default cache holds the CPU build
    # under the same name and version, which uv would otherwise reuse.
    nvcc_version=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release .*, V\([0-9.]*\)$/\1/p')
    cuda_cache=${XDG_CACHE_HOME:-$HOME/.cache}/inline-mmcv-cuda/cuda$nvcc_version-sm$(
        tr -c '0-9.\n' '_' <<< "$TORCH_CUDA_ARCH_LIST")
    log=$VENV/mmcv-cuda-build.log
    echo "setup: mmcv==$MMCV_VERSION with CUDA ops: CUDA_HOME=$CUDA_HOME" \
        "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS (first build: 136 files," \
        "62 CPU-minutes for one architecture; cached afterwards; log: $log)"
    # Whatever mmcv is installed (a CPU build, another architecture's) goes first, so that the
    # install below takes this cache's build (--reinstall-package would refresh, i.e. rebuild).
    "${uv[@]}" uninstall -q mmcv 2>/dev/null || true
    if ! PATH="$CUDA_HOME/bin:$PATH" FORCE_CUDA=1 MMCV_WITH_OPS=1 UV_CACHE_DIR=$cuda_cache \
        "${uv[@]}" install -v --no-build-isolation --no-deps "mmcv==$MMCV_VERSION" > "$log" 2>&1
    then
        tail -n 30 "$log" >&2
        echo "setup: the CUDA build of mmcv failed (whole log: $log). Fixes: a lower MAX_JOBS if the" \
            "compiler was killed for memory; CUDA_HOME=<a CUDA toolkit of torch's version> if the" \
            "compiler itself failed; FORCE_CUDA=0 to build CPU ops only." >&2
        exit 2
    fi
    "$VENV/bin/python" tools/cuda_setup.py verify
fi
"${uv[@]}" install -q --no-deps "mmdet==$MMDET_VERSION" "mmsegmentation==$MMSEG_VERSION"
"${uv[@]}" install -q --no-deps --no-build-isolation -e .
"${uv[@]}" check

"$VENV/bin/python" -c "import mmcv.ops, mmdet.models, mmseg.models, backbones, heads, lightning_modules"
echo "$want" > "$stamp"
echo "setup: done in $((SECONDS - start)) s"
