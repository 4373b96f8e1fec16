#!/usr/bin/env bash
# timm's own model tests (tests/test_models.py of timm's repository) on this project's 16 variants.
# Not part of the project's test suite: it needs a copy of timm's repository (a git directory,
# bare or not). See the README, "Export and checkpoint conversion", "timm's model tests".
#
#   bash tools/run_timm_tests.sh TIMM_GIT_DIR [WORK_DIR] [extra pytest args...]
#
# Extracts timm's tests/ at the repository's HEAD into WORK_DIR (default /tmp/timm_model_tests),
# adds a conftest.py that imports `backbones` (which registers the variants before the test
# module builds its model lists) and this project's entries in three of the test module's lists,
# then runs the tests whose ids name one of the variants. Nothing of timm's is copied here.
set -eu -o pipefail
SNAP=${1:?usage: run_timm_tests.sh TIMM_GIT_DIR [WORK_DIR] [pytest args...]}
WORK=${2:-/tmp/timm_model_tests}
shift $(( $# < 2 ? $# : 2 ))
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
case $PY in /*|"${PY##*/}") ;; *) PY=$PWD/$PY ;; esac  # we cd below

rm -rf "$WORK" && mkdir -p "$WORK"
echo "timm tests from $(git --git-dir="$SNAP" rev-parse HEAD)" \
     "($(git --git-dir="$SNAP" show HEAD:timm/version.py | tr -d '\n'))"
git --git-dir="$SNAP" archive HEAD tests | tar -x -C "$WORK"
echo "import backbones  # noqa: F401  (registers inline_* and l2vit_* with timm)" \
    > "$WORK/tests/conftest.py"

# The lists are read when the test module is imported: extend them before their first use.
"$PY" - "$WORK/tests/test_models.py" <<'EOF'
import sys
path = sys.argv[1]
src = open(path).read()
anchor = "\nTARGET_FWD_SIZE = MAX_FWD_SIZE"
if anchor not in src:
    sys.exit(f"{path}: line {anchor.strip()!r} not found; timm's test module has changed")
block = """
# ---- this project's variants (added by tools/run_timm_tests.sh) ----
# modules whose models have forward_intermediates() and the 'getter' features_only wrapper
FEAT_INTER_FILTERS += ['inline_deit', 'inline_swin', 'inline_pvt', 'inline_cswin', 'l2vit']
# ViT-like: forward_features gives (B, 1 + N, C) tokens, as timm's deit_* / vit_*
NON_STD_FILTERS += ['inline_deit*']
# not scriptable with torch.jit.script (reasons in the project's README)
EXCLUDE_JIT_FILTERS += ['inline_*', 'l2vit_*']
"""
open(path, "w").write(src.replace(anchor, "\n" + block + anchor, 1))
EOF

cd "$WORK"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" -m pytest tests/test_models.py -k "inline_ or l2vit_" -p no:cacheprovider -q -rfEs \
    -W ignore::pytest.PytestUnknownMarkWarning "$@"
