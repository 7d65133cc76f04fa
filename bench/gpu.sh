#!/usr/bin/env bash
# The GPU benchmark as one prepared script (one H200: under 8 minutes). See bench/gpu.py.
#
#   bash bench/gpu.sh                              # defaults: ml-1m if found, 150 s of training
#   bash bench/gpu.sh --time-budget-s 120 train.batch_size=512
#
# Writes ${OUT:-.}/gpu.json and prints it at the end. Installs nothing: it runs $PYTHON
# (default: python, else python3, on PATH), which must already hold this project's
# dependencies with a CUDA build of torch.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
out="${OUT:-.}/gpu.json"
mkdir -p "$(dirname "$out")"
export TQDM_DISABLE="${TQDM_DISABLE:-1}"
"$PYTHON" "$here/gpu.py" --out "$out" "$@"
echo "--- $out"
cat "$out"
