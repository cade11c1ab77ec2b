"""torch.distributed data-parallel training: 2 CPU processes (gloo) launched by torchrun."""

import json
import subprocess

import pytest
import torch
from helpers import REPO_ROOT, VENV_BIN, venv_env

pytestmark = pytest.mark.slow


def _torchrun(prepared, out, *args):
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "mfrec.training.distributed",
           "--prepared", str(prepared.path), "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                          env=venv_env(PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr[-5000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert (out / "recommender" / "weights.pt").is_file()
    return metrics


def test_two_gloo_ranks_als_matches_single_process(prepared_small, trained_small, tmp_path):
    """ALS over 2 ranks: each sums its shard's normal equations, all_reduce adds them, so the
    result is single-process training up to float summation order."""
    metrics = _torchrun(prepared_small, tmp_path)
    single = trained_small.metrics
    assert metrics["best_epoch"] == single["best_epoch"]
    assert abs(metrics["test_rmse"] - single["test_rmse"]) < 0.002
    assert abs(metrics["test_ndcg_at_10"] - single["test_ndcg_at_10"]) < 0.01


def test_two_gloo_ranks_adam_ddp_trains_a_good_model(prepared_small, tmp_path):
    """The Adam solver over 2 ranks with DistributedDataParallel (gradients averaged)."""
    metrics = _torchrun(prepared_small, tmp_path, "--solver", "adam", "--reg", "10", "--implicit-weight", "1")
    # Single-process Adam with these settings: test RMSE 0.838, NDCG@10 0.222 (docs/results.md).
    assert metrics["test_rmse"] < 0.86
    assert metrics["test_rmse"] < metrics["baseline_bias_rmse"]
    assert metrics["test_ndcg_at_10"] > 1.15 * metrics["baseline_popularity_ndcg_at_10"]


_BLOCKED_FIT = """
import sys
import numpy as np, torch, torch.distributed as dist
from mfrec.training import als
from mfrec.data.ids import Interactions
from mfrec.training.config import TrainConfig
from mfrec.training.fit import fit
als.BLOCK_ROWS, als.BLOCK_RATINGS = 7, 40  # many small blocks, cut differently by each shard
rng = np.random.default_rng(5)
users = rng.integers(0, 60, 900).astype(np.int32)
items = (rng.zipf(1.6, 900) % 45).astype(np.int32)  # skewed: shards differ in ratings per row
ratings = (rng.integers(1, 11, 900) * 0.5).astype(np.float32)
data = Interactions(users, items, ratings, 60, 45)
if len(sys.argv) > 2:
    dist.init_process_group("gloo")
model = fit(data, TrainConfig(epochs=3, progress=False, device="cpu").with_prior()).model
if len(sys.argv) == 2 or dist.get_rank() == 0:
    torch.save(model.state_dict(), sys.argv[1])
if len(sys.argv) > 2:  # exiting with gloo's threads still up aborts the process
    dist.barrier()
    dist.destroy_process_group()
"""


def test_ranks_cut_their_shards_into_the_same_blocks(tmp_path):
    """With many blocks (a 25M-rating set has dozens) the ranks' shards hold different
    ratings per row, yet their block results are all-reduced pairwise: they must cut at the
    same rows, and the result must equal one process's."""
    script = tmp_path / "blocked_fit.py"
    script.write_text(_BLOCKED_FIT)
    env = venv_env(PYTHONPATH=str(REPO_ROOT))
    single, ranks = tmp_path / "single.pt", tmp_path / "ranks.pt"
    subprocess.run([str(VENV_BIN / "python"), str(script), str(single)], check=True, env=env, timeout=300)
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(script), str(ranks),
                           "distributed"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    one, two = torch.load(single, weights_only=True), torch.load(ranks, weights_only=True)
    for name, value in one.items():
        assert torch.allclose(value, two[name], atol=1e-4), name
