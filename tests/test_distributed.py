"""torch.distributed data-parallel training: 2 CPU processes (gloo) launched by torchrun."""

import json
import subprocess

import pytest
from helpers import REPO_ROOT, VENV_BIN, venv_env

pytestmark = pytest.mark.slow


def test_two_gloo_ranks_match_single_process_quality(prepared_small, trained_small, tmp_path):
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "mfrec.distributed",
           "--prepared", str(prepared_small.path), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                          env=venv_env(PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr[-5000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    single = trained_small.metrics
    assert metrics["world_size"] == 2
    assert abs(metrics["test_rmse"] - single["test_rmse"]) < 0.01
    assert metrics["test_rmse"] < metrics["baseline_bias_rmse"]
    assert metrics["test_ndcg_at_10"] > 1.15 * metrics["baseline_popularity_ndcg_at_10"]
    assert (tmp_path / "recommender" / "weights.pt").is_file()
