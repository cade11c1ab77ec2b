#!/usr/bin/env bash
# GPU check, for a machine with a CUDA GPU and this repo's environment installed:
# the tests marked `gpu` and the synthetic-25m training throughput, in under 8 minutes.
#   bash scripts/gpu_check.sh [path/to/ml-latest-small.zip]
# Not run in CI (CI has no GPU); the CPU code paths are covered there.
set -euo pipefail
cd "$(dirname "$0")/.."
ZIP=${1:-${MFREC_TEST_ZIP:-../shared/data/ml-latest-small.zip}}
export MFREC_TEST_ZIP=$ZIP
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"
timeout 240 python -m pytest -q -m gpu -p no:cacheprovider
tracking=$(mktemp -d)
MLFLOW_TRACKING_URI="sqlite:///$tracking/mlflow.db" timeout 240 python -m benchmarks.run \
  --data-path "$ZIP" --scale synthetic-25m --notebook-epochs 1 --serve-requests 0 --output-json "$tracking/gpu.json"
echo "figures: $tracking/gpu.json"
