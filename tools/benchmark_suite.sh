#!/usr/bin/env bash
# The performance suite of the README in one command: every target of the performance section,
# JSON records + plots under OUT_DIR (default docs/benchmark/<device>_*).
#
#   bash tools/benchmark_suite.sh cuda [OUT_DIR]    # a GPU machine: fp32, bf16 and fp16 autocast
#   bash tools/benchmark_suite.sh cpu  [OUT_DIR]    # one thread per job, as the CPU figures were
#
# Each step is a separate tools/benchmark.py run, so a step that fails (or a job that runs out of
# memory / time, recorded as such) does not stop the others; the exit status is the number of
# steps that failed. ONLY=REGEX runs the steps whose names match (e.g. ONLY='^ops_|det_step'),
# for machines that limit one command's time.
set -u -o pipefail
DEVICE=${1:?usage: benchmark_suite.sh cuda|cpu [OUT_DIR]}
OUT=${2:-docs/benchmark}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"

if [ "$DEVICE" = cpu ]; then
    export OMP_NUM_THREADS=1
    COMMON=(--device cpu --threads 1 --malloc keep)
    PRECISIONS=(32)
    SIZES=(512 1024 2048)
    TOKENS=(1024 4096 16384 65536)
    BUDGET=200
else
    COMMON=(--device "$DEVICE")
    PRECISIONS=(32 bf16-mixed 16-mixed)
    SIZES=(512 1024 2048 4096)
    TOKENS=(1024 4096 16384 65536 262144)
    BUDGET=120
fi
tag=${DEVICE%%:*}
failed=0
step() {  # step NAME ARGS...: one benchmark run, its log beside its records
    local name=$1
    shift
    [[ -n ${ONLY:-} && ! $name =~ $ONLY ]] && return
    echo "== $name"
    local plot=(--plot "$OUT/${tag}_$name.png")
    [ "$name" = det_step ] && plot=()  # no pixels to plot against
    if ! "$PY" tools/benchmark.py "${COMMON[@]}" "$@" --out "$OUT/${tag}_$name.json" \
            "${plot[@]}" 2>&1 | tee "$OUT/${tag}_$name.log"; then
        echo "step $name failed"
        failed=$((failed + 1))
    fi
}

SWIN=(inline_swin_tiny swin_tiny_patch4_window7_224 inline_swin_tiny:attn_types=SSSS,global_softmax=True)
FAMILIES=(inline_deit_tiny inline_deit_small inline_deit_base inline_pvt_tiny inline_pvt_small
          inline_pvt_medium inline_pvt_large inline_swin_small inline_swin_base inline_cswin_tiny
          inline_cswin_small inline_cswin_base inline_cswin_tiny:attn_types=IIII l2vit_tiny
          l2vit_small l2vit_base)

for p in "${PRECISIONS[@]}"; do
    # Targets 1-2 (1024², >= 1.0x Swin-T, >= 10x the all-softmax counterpart) and the plot.
    step "infer_swin_$p" --models "${SWIN[@]}" --sizes "${SIZES[@]}" --mode infer \
        --precision "$p" --runs 5 --budget "$BUDGET"
    # Target 4 (InLine op: >= 50x SDPA at N = 16384, within 2x of the bandwidth time).
    step "ops_$p" --op inline linear l2vit softmax window --tokens "${TOKENS[@]}" \
        --precision "$p" --runs 10 --budget "$BUDGET"
done
# Target 2 for every variant (512² -> 2048² within 1.1x of linear in pixels).
step infer_families_32 --models "${FAMILIES[@]}" --sizes 512 2048 --mode infer --runs 3 \
    --budget "$BUDGET"
# Target 3 (training peak memory at 1024² <= 1.1x Swin-T), with and without recomputation.
step train_swin_32 --models inline_swin_tiny swin_tiny_patch4_window7_224 --sizes 512 1024 \
    --mode train --runs 3 --budget "$BUDGET"
step train_swin_gradckpt_32 --models inline_swin_tiny swin_tiny_patch4_window7_224 --sizes 1024 \
    --mode train --runs 3 --budget "$BUDGET" --grad-checkpointing
# torch.compile against eager (the first call of each job compiles; it is not timed).
step infer_swin_compiled_32 --models inline_swin_tiny swin_tiny_patch4_window7_224 \
    --sizes 512 1024 --mode infer --runs 5 --budget 600 --compile
# Target 5 (Lightning detection step <= 1.05x mmengine's Runner): needs the demo data
# (tools/make_demo_data.py).
step det_step --mode det-step --config configs/demo/mask-rcnn_inline-pvt-demo_fpn_demo-coco.py \
    --iters 20 --warmup-iters 5 --rounds 2
echo "$failed step(s) failed; records in $OUT/${tag}_*.json"
exit "$failed"
