#!/usr/bin/env bash
# One-command set-up of .venv/ from requirements/lock.txt. Idempotent: a stamp holding the hash of
# the inputs makes a second run a no-op, and uv's cache keeps the built mmcv wheel between runs.
#
# Why uv and not pip: pip on these machines prefers a local CPU-only torch wheel, beside which
# torchvision 0.28 fails at import (its nms fake kernel); uv resolves the registry's standard builds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
UV_VERSION=0.13.8
MMCV_VERSION=2.1.0        # mmdet 3.3 / mmseg 1.2.2 require mmcv < 2.2; 2.1.0 is source-only
MMDET_VERSION=3.3.0
MMSEG_VERSION=1.2.2

stamp=$VENV/.setup-stamp
want=$(cat requirements/lock.txt tools/setup.sh setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup: .venv is up to date"
    exit 0
fi

start=$SECONDS
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
export VIRTUAL_ENV=$PWD/$VENV
uv=("$VENV/bin/uv" pip)

echo "setup: locked dependencies (torch, torchvision, lightning, timm, mmengine, ...)"
"${uv[@]}" install -q -r requirements/lock.txt

# mmcv's compiled ops must be built against the torch just installed: no build isolation.
# CPU ops only when no GPU is visible. ~13-20 min on 2 cores the first time, cached by uv after.
echo "setup: mmcv==$MMCV_VERSION with ops (built from source on the first run; cached afterwards)"
MMCV_WITH_OPS=1 "${uv[@]}" install -q --no-build-isolation --no-deps "mmcv==$MMCV_VERSION"
"${uv[@]}" install -q --no-deps "mmdet==$MMDET_VERSION" "mmsegmentation==$MMSEG_VERSION"
"${uv[@]}" install -q --no-deps --no-build-isolation -e .
"${uv[@]}" check

"$VENV/bin/python" -c "import mmcv.ops, mmdet.models, mmseg.models, backbones, heads, lightning_modules"
echo "$want" > "$stamp"
echo "setup: done in $((SECONDS - start)) s"
