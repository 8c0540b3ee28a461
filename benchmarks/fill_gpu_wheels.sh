#!/usr/bin/env bash
# Fill .gpu_wheels/ with the wheels benchmarks/gpu_check.sh installs offline (pip --no-index --find-links) on
# a GPU machine that has torch, timm, accelerate, pyarrow and huggingface_hub but not `datasets`: datasets and
# the dependencies such machines usually lack (dill, multiprocess, xxhash, fsspec) plus pytest, for each
# Python version given (pure-Python wheels once, compiled ones per version), Linux x86_64.
#
#   bash benchmarks/fill_gpu_wheels.sh                                   # Python 3.10 - 3.13
#   PY_VERSIONS=3.12 EXTRA="pandas scikit-learn" bash benchmarks/fill_gpu_wheels.sh
#
# Needs PyPI. The folder is git-ignored: pass it to the GPU machine with the repository (e.g. as a carried path).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.gpu_wheels}
PY_VERSIONS=${PY_VERSIONS:-"3.10 3.11 3.12 3.13"}
PYTHON=${PYTHON:-python}
# datasets 5.2 needs pyarrow >= 24 and huggingface_hub >= 1.31 (already on the GPU machine, or add them to EXTRA)
PACKAGES=${PACKAGES:-"datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash fsspec==2026.9.0 pytest pluggy iniconfig pygments"}
EXTRA=${EXTRA:-}
mkdir -p "$DEST"
for version in $PY_VERSIONS; do
    for requirement in $PACKAGES $EXTRA; do
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" \
            --python-version "$version" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any "$requirement"
    done
done
echo "$DEST: $(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1)"
