"""The train step on shards of users: CPU processes (gloo) launched by torchrun."""

import json
import re
import subprocess

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, VENV_BIN, venv_env

pytestmark = pytest.mark.slow

# Every setting given (the search's starting point, and a neighbour term): a run that searches
# nothing, so one process and four ranks fit and rank with the same settings.
START = ["--reg", "2.5", "--reg-exponent", "0", "--implicit-weight", "2", "--confidence", "5",
         "--rating-weight", "0.25", "--genre-weight", "0.1", "--neighbour-weight", "4", "--neighbour-reg", "4"]
COMPARED = ("test_rmse", "test_mae", "test_precision_at_10", "test_recall_at_10", "test_ndcg_at_10",
            "baseline_bias_rmse", "baseline_global_mean_rmse", "baseline_popularity_ndcg_at_10", "best_val_rmse")


def _torchrun(prepared, out, ranks, *args, check=True):
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", "-m", "mfrec.training.distributed",
           "--prepared", str(prepared.path), "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                          env=venv_env(PYTHONPATH=str(REPO_ROOT)))
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr[-5000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == ranks
    return metrics


@pytest.fixture(scope="module")
def one_process(small_split):
    """The library's train step in one process with ``START``'s settings."""
    from mfrec.serving.bundle import RankingConfig
    from mfrec.training.config import TrainConfig
    from mfrec.workflow import train_and_evaluate

    return train_and_evaluate(*small_split, TrainConfig(progress=False, device="cpu").with_prior(),
                              RankingConfig(neighbour_weight=4.0, neighbour_reg=4.0).with_prior())


def test_four_gloo_ranks_give_the_single_process_model(prepared_small, one_process, tmp_path):
    """Each rank reads a quarter of the users, solves them alone and all-reduces the item
    sums: the metrics agree with one process's to the digits a run prints, and so does the
    recommender rank 0 assembles."""
    from mfrec.serving.recommender import Recommender

    metrics = _torchrun(prepared_small, tmp_path, 4, *START)
    single = one_process.metrics
    assert metrics["best_epoch"] == single["best_epoch"]
    assert metrics["test_ranked_users"] == single["test_ranked_users"]
    for name in COMPARED:
        assert round(metrics[name], 4) == round(single[name], 4), name
    # Every rank held its own users' ratings: together all of train + validation, each about a quarter.
    held = metrics["rank_ratings"]
    assert sum(held) == len(prepared_small.train) + len(prepared_small.val)
    assert max(held) < 1.4 * sum(held) / 4
    assert metrics["allreduce_bytes_per_sweep"] > 0 and len(metrics["rank_peak_rss_gib"]) == 4

    rec = Recommender.load(tmp_path / "recommender")
    expected = one_process.recommender.bundle
    assert np.array_equal(rec.bundle.user_index.ids, expected.user_index.ids)
    for name, value in expected.model.state_dict().items():
        assert torch.allclose(rec.bundle.model.state_dict()[name], value, atol=1e-4), name
    for row in (0, 17, len(expected.user_index) - 1):
        seen = rec.bundle.seen_indices[rec.bundle.seen_indptr[row]:rec.bundle.seen_indptr[row + 1]]
        want = expected.seen_indices[expected.seen_indptr[row]:expected.seen_indptr[row + 1]]
        assert sorted(seen) == sorted(want)
    assert np.allclose(rec.bundle.genre_votes, expected.genre_votes)
    assert np.array_equal(rec.bundle.neighbours.items, expected.neighbours.items)
    assert np.allclose(rec.bundle.neighbours.weights, expected.neighbours.weights, atol=1e-5)
    assert rec.bundle.items["n_ratings"].tolist() == expected.items["n_ratings"].tolist()
    user = int(expected.user_index.ids[5])
    assert rec.recommend([user], 10)["movieId"].tolist() == one_process.recommender.recommend([user], 10)["movieId"].tolist()


def test_the_readme_commands_train_on_two_ranks_with_auto_settings(shared_zip, tmp_path):
    """The README's two commands as printed (the data's path swapped in): rank 0's search, on
    its half of the users, chooses the settings for both ranks; the model ranks well."""
    section = (REPO_ROOT / "README.md").read_text().split("## Training on several machines", 1)[1]
    lines = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines()
    assert len(lines) == 2 and "'ml-latest-small.zip'" in lines[0] and lines[1].startswith("torchrun ")
    env = venv_env(PYTHONPATH=str(REPO_ROOT))
    for line in lines:
        line = line.replace("'ml-latest-small.zip'", repr(str(shared_zip)))
        done = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
        assert done.returncode == 0, done.stderr[-5000:]
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["search_trials"] >= 1
    assert "settings chosen on validation" in metrics["settings_choice"]
    assert metrics["test_rmse"] < metrics["baseline_bias_rmse"] < metrics["baseline_global_mean_rmse"]
    assert metrics["test_ndcg_at_10"] > 1.4 * metrics["baseline_popularity_ndcg_at_10"]
    assert (tmp_path / "model" / "recommender" / "weights.pt").is_file()


def test_a_bad_setting_stops_every_rank_with_its_name(prepared_small, tmp_path):
    proc = _torchrun(prepared_small, tmp_path, 2, "--reg", "nonsense", check=False)
    assert proc.returncode != 0 and "--reg: invalid" in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("solver, stop_on", [("adam", "val_rmse"), ("als", "val_ndcg_at_10")])
def test_a_sharded_fit_is_als_on_validation_rmse(solver, stop_on):
    """Adam's gradients and a ranking metric's early stopping have no sharded form here: the
    fit says so instead of training something else."""
    from mfrec.data.ids import Interactions
    from mfrec.errors import ConfigError
    from mfrec.training.config import TrainConfig
    from mfrec.training.fit import fit
    from mfrec.training.shards import Shard

    data = Interactions(np.array([0, 1]), np.array([0, 1]), np.array([4.0, 3.0], np.float32), 2, 2)
    config = TrainConfig(solver=solver, progress=False, device="cpu").with_prior()
    with pytest.raises(ConfigError, match="shards of users runs ALS"):
        fit(data, config, val=data, score_epoch=lambda model: {"val_ndcg_at_10": 0.0}, stop_on=stop_on,
            shard=Shard(0, 1, np.arange(2), 2))


_BLOCKED_FIT = """
import sys
import numpy as np, torch, torch.distributed as dist
from mfrec.training import csr
from mfrec.data.ids import IdIndex, Interactions
from mfrec.training.config import TrainConfig
from mfrec.training.fit import fit
from mfrec.training.shards import Shard
csr.BLOCK_ROWS, csr.BLOCK_RATINGS, csr.MIN_BLOCK_RATINGS = 7, 40, 1  # many small blocks
rng = np.random.default_rng(5)
pairs = np.unique(np.stack([rng.integers(0, 60, 1200), rng.zipf(1.6, 1200) % 45], 1), axis=0)  # one rating a pair
users, items = pairs[:, 0], pairs[:, 1]  # items skewed: the ranks' shares of an item's ratings differ
ratings = (rng.integers(1, 11, len(pairs)) * 0.5).astype(np.float32)
config = TrainConfig(epochs=3, progress=False, device="cpu", als_solve=sys.argv[2]).with_prior()
if len(sys.argv) == 3:
    model = fit(Interactions(users, items, ratings, 60, 45), config).model
    torch.save(model.state_dict(), sys.argv[1])
    sys.exit()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
mine = np.flatnonzero(np.arange(60) % world == rank)  # global rows of this rank's users
keep = np.isin(users, mine)
local = IdIndex(mine)
shard = Shard(rank, world, mine, 60)
model = fit(Interactions(local.index(users[keep]), items[keep], ratings[keep], len(mine), 45), config, shard=shard).model
parts = shard.gather((mine, {k: v for k, v in model.state_dict().items() if k.startswith("user_")}))
if rank == 0:
    state = model.state_dict()
    for name in [k for k in state if k.startswith("user_")]:
        table = torch.empty((60, *state[name].shape[1:]))
        for rows, part in parts:
            table[torch.from_numpy(rows)] = part[name]
        state[name] = table
    torch.save(state, sys.argv[1])
dist.barrier()  # exiting with gloo's threads still up aborts the process
dist.destroy_process_group()
"""


@pytest.mark.parametrize("solve", ["exact", "cg"])
def test_ranks_cut_the_items_into_the_same_blocks(tmp_path, solve):
    """With many item blocks (a 25M-rating set has dozens) the ranks hold different shares of
    an item's ratings, yet their block sums are all-reduced pairwise: they must cut at the
    same items, and the result must equal one process's, with either solve."""
    script = tmp_path / "blocked_fit.py"
    script.write_text(_BLOCKED_FIT)
    env = venv_env(PYTHONPATH=str(REPO_ROOT))
    single, ranks = tmp_path / "single.pt", tmp_path / "ranks.pt"
    subprocess.run([str(VENV_BIN / "python"), str(script), str(single), solve], check=True, env=env, timeout=300)
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=3", str(script), str(ranks),
                           solve, "distributed"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    one, three = torch.load(single, weights_only=True), torch.load(ranks, weights_only=True)
    for name, value in one.items():
        assert torch.allclose(value, three[name], atol=1e-4), name
