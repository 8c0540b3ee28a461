#!/usr/bin/env bash
# GPU readiness in one script (under 8 minutes on one GPU), then one summary:
#   1. environment: Python, torch, the CUDA device; packages the machine lacks (datasets, dill, multiprocess,
#      xxhash, pytest) installed offline from .gpu_wheels/ (fill it beforehand: benchmarks/fill_gpu_wheels.sh)
#   2. the CUDA tests (pytest -m cuda)
#   3. the demo (recipes/configs/demo.yaml, 1 epoch) end to end with fp16 (accelerate's GradScaler) and bf16
#   4. benchmarks/input_pipeline.py, benchmarks/e2e_throughput.py, benchmarks/loss_overhead.py on the device
#   5. benchmarks/e2e_throughput.py with --channels-last --compile (last: compilation takes minutes)
# Each step has a time limit and the whole script a budget (BUDGET_S, default 470 s); a step that would
# start past it is skipped. Logs and run folders go to $OUT/gpu_check (default: a new temporary folder).
#
#   bash benchmarks/gpu_check.sh                        # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --quick   # a dry run of the same steps on a CPU machine
set -u
cd "$(dirname "$0")/.."
DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        *) echo "usage: $0 [--device cuda|cpu] [--quick]"; exit 2 ;;
    esac
done
PY=${PYTHON:-python}
WHEELS=${GPU_WHEELS:-.gpu_wheels}
LOGS=${OUT:-$(mktemp -d -t spl_gpu_check.XXXXXX)}/gpu_check
BUDGET_S=${BUDGET_S:-470}
mkdir -p "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SPL_LOSSES_CACHE="$LOGS/cache" HF_HOME="$LOGS/hf_home" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
START=$(date +%s)
SUMMARY=()

key_lines() {  # the lines of a step's log that go into the summary
    case "$1" in
        environment) grep -E "^(python|torch|device|missing|installed)" "$2" ;;
        cuda_tests) tail -n 1 "$2" ;;
        demo_*) grep -E "process\(es\) on|^best epoch|^(epr|an|bce) " "$2" | sed 's/  */ /g' ;;
        input_pipeline) grep -E "^(one core|limit|recipe loader|  the same|timm|target)" "$2" | sed 's/   */ /g' ;;
        e2e_*) grep -E "^(training|feature extraction)" "$2" | sed 's/   */ /g' ;;
        loss_overhead) echo "$(grep -c '| ok' "$2") ok, $(grep -c 'MISS' "$2") MISS against the targets; $(grep -E 'held once' "$2")" ;;
    esac
}

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log, keep its key lines for the summary
    local name=$1 limit=$2
    shift 2
    local log="$LOGS/$name.log" left=$(( START + BUDGET_S - $(date +%s) )) t0 rc status
    if [ "$left" -lt 20 ]; then
        SUMMARY+=("$(printf '%-16s %-20s' "$name" "SKIPPED (budget)")")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s): $*"
    t0=$(date +%s)
    timeout "$limit" "$@" > "$log" 2>&1
    rc=$?
    case $rc in 0) status=ok ;; 124) status="TIMEOUT ${limit}s" ;; *) status="FAILED exit $rc" ;; esac
    SUMMARY+=("$(printf '%-16s %-20s %4ss' "$name" "$status" "$(( $(date +%s) - t0 ))")")
    while IFS= read -r line; do SUMMARY+=("      $line"); done < <(key_lines "$name" "$log")
    [ "$status" = ok ] || tail -n 15 "$log"
}

environment() {
    "$PY" -c "import sys; print('python', sys.version.split()[0], sys.executable)"
    missing=$("$PY" - <<'PYEOF'
import importlib.util
needed = {"datasets": "datasets", "dill": "dill", "multiprocess": "multiprocess", "xxhash": "xxhash", "pytest": "pytest"}
print(" ".join(package for module, package in needed.items() if importlib.util.find_spec(module) is None))
PYEOF
)
    if [ -n "$missing" ]; then
        echo "installing from $WHEELS: $missing"
        "$PY" -m pip install --no-index --find-links "$WHEELS" $missing || echo "installed: pip could not install $missing"
    fi
    "$PY" - "$DEVICE" <<'PYEOF'
import importlib.util
import sys

import torch

print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
modules = ["torch", "torchvision", "timm", "accelerate", "datasets", "huggingface_hub", "pyarrow", "safetensors",
           "sklearn", "scipy", "matplotlib", "yaml", "PIL", "tqdm", "pytest"]
missing = [m for m in modules if importlib.util.find_spec(m) is None]
print("missing:", " ".join(missing) if missing else "none")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device")
sys.exit(1 if missing else 0)
PYEOF
}

if [ "$QUICK" = 1 ]; then
    DEMO=(--loss epr --dataset-option num_train=128 --dataset-option num_validation=32 --dataset-option num_test=32)
    INPUT=(--quick)
    E2E=(--quick --rounds 1)
    LOSSES=(--losses an,epr,role --repeats 2 --warmup 1 --skip-memory-check --num-examples 2000)
    COMPILED=(--quick --rounds 1 --skip-features --channels-last)  # compiling on CPU takes minutes: --channels-last only
else
    DEMO=()
    INPUT=()
    E2E=()
    LOSSES=(--repeats 10)
    COMPILED=(--rounds 1 --skip-features --images 512 --channels-last --compile)
fi
if [ "$DEVICE" = cuda ]; then FP16=fp16; else FP16=no; fi  # fp16 (GradScaler) needs a GPU

export PY WHEELS DEVICE
export -f environment
step environment 60 bash -c environment
step cuda_tests 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
step demo_fp16 90 "$PY" recipes/train.py -c recipes/configs/demo.yaml --epochs 1 --mixed-precision "$FP16" \
    --output-dir "$LOGS/demo_fp16" "${DEMO[@]}"
step demo_bf16 90 "$PY" recipes/train.py -c recipes/configs/demo.yaml --epochs 1 --mixed-precision bf16 \
    --output-dir "$LOGS/demo_bf16" "${DEMO[@]}"
step input_pipeline 90 "$PY" benchmarks/input_pipeline.py --device "$DEVICE" "${INPUT[@]}"
step e2e_throughput 150 "$PY" benchmarks/e2e_throughput.py --device "$DEVICE" "${E2E[@]}"
step loss_overhead 90 "$PY" benchmarks/loss_overhead.py --device "$DEVICE" "${LOSSES[@]}"
step e2e_compiled 240 "$PY" benchmarks/e2e_throughput.py --device "$DEVICE" "${COMPILED[@]}"

echo
echo "== summary: device $DEVICE$([ "$QUICK" = 1 ] && echo ' (quick dry run)'), $(( $(date +%s) - START )) s, logs in $LOGS"
printf '%s\n' "${SUMMARY[@]}"
! printf '%s\n' "${SUMMARY[@]}" | grep -qE "FAILED|TIMEOUT"
