"""The project's declared environments agree with each other and with the MLproject."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_conda_pip_list_matches_pyproject_dependencies():
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_lists = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "conda.yaml needs exactly one pip: list"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = pyproject["project"]["dependencies"]
    assert sorted(r.replace(" ", "") for r in pip_lists[0]) == sorted(r.replace(" ", "") for r in declared)
    assert "python=3.11" in conda["dependencies"]


def test_mlproject_entry_points_and_parameters():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert project["conda_env"] == "conda.yaml"
    entry = project["entry_points"]
    assert {"main", "prepare", "train", "cluster"} <= set(entry)
    prepare = entry["prepare"]["parameters"]
    assert prepare["dataset"]["default"] == "ml-latest-small"
    assert prepare["split"]["default"] == "random"
    assert prepare["test_fraction"]["default"] == 0.2 and prepare["val_fraction"]["default"] == 0.1
    assert entry["train"]["parameters"]["n_factors"]["default"] == 8
    assert entry["cluster"]["parameters"]["n_clusters"]["default"] == 10
    # main takes every step's parameters (except the artifact hand-offs) plus the registration's
    main = set(entry["main"]["parameters"])
    steps = set(prepare) | set(entry["train"]["parameters"]) | set(entry["cluster"]["parameters"])
    assert steps - {"prepared", "embeddings"} | {"model_name", "champion_metric"} == main
    for name, spec in entry.items():
        for param in spec["parameters"]:
            assert "{" + param + "}" in spec["command"], f"{name}: {param} not passed to the command"


def test_train_defaults_agree_with_library():
    from mfrec.training.config import TrainConfig

    project = yaml.safe_load((ROOT / "MLproject").read_text())
    cfg = TrainConfig()
    for entry in ("main", "train"):
        params = project["entry_points"][entry]["parameters"]
        for key in ("n_factors", "epochs", "batch_size", "lr", "reg", "implicit_weight", "confidence", "als_solve",
                    "seed"):
            assert params[key]["default"] == getattr(cfg, key), f"{entry}.{key}"
        assert float(params["reg_exponent"]["default"]) == cfg.reg_exponent
