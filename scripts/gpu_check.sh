#!/usr/bin/env bash
# GPU check, for a machine with a CUDA GPU and this repo's environment installed, in under 8
# minutes: the tests marked `gpu` (CPU and GPU agree), then seconds per ALS sweep at 25M
# ratings on the CPU and the GPU for k = 8, 32, 128, and the default train step with
# evaluation on the GPU (benchmarks/gpu_sweeps.py).
#   bash scripts/gpu_check.sh [path/to/ml-latest-small.zip]
# Not run in CI (CI has no GPU); the CPU code paths are covered there.
set -euo pipefail
cd "$(dirname "$0")/.."
ZIP=${1:-${MFREC_TEST_ZIP:-../shared/data/ml-latest-small.zip}}
export MFREC_TEST_ZIP=$ZIP
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"
timeout 150 python -m pytest -q -m gpu -p no:cacheprovider
out=$(mktemp -d)
timeout 300 python -m benchmarks.gpu_sweeps --dataset synthetic-25m --factors 8,32,128 --devices cpu,cuda \
  --train cuda --output-json "$out/gpu.json"
echo "figures: $out/gpu.json"
