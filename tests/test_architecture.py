"""The layout docs/architecture.md describes: small modules, a shallow acyclic import graph,
MLflow only at the edges, and a logged model that carries only what serving imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT, venv_env

from mfrec.imports import PACKAGE_DIR, own_imports

MODULES = sorted(".".join(("mfrec", *p.relative_to(PACKAGE_DIR).with_suffix("").parts)).removesuffix(".__init__")
                 for p in PACKAGE_DIR.rglob("*.py"))
MLFLOW_EDGE = {"mfrec.tracking", "mfrec.registry", "mfrec.serving.pyfunc"}


def _source(module: str) -> Path:
    from mfrec.imports import module_path

    return module_path(module)


def test_modules_and_classes_are_small():
    for module in MODULES:
        text = _source(module).read_text()
        assert len(text.splitlines()) <= 400, f"{module}: {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 200, f"{module}.{node.name}: {length} lines"


def test_import_graph_is_acyclic_and_shallow():
    graph = {m: own_imports(m) - {m} for m in MODULES}
    depths, path = {}, []

    def depth(module: str) -> int:
        """Modules in the longest import chain that starts at ``module``."""
        assert module not in path, f"import cycle: {' -> '.join(path + [module])}"
        if module not in depths:
            path.append(module)
            depths[module] = 1 + max((depth(m) for m in graph[module]), default=0)
            path.pop()
        return depths[module]

    deepest = max(MODULES, key=depth)
    assert depth(deepest) <= 9, f"{deepest} starts an import chain {depth(deepest)} modules deep"


def test_only_the_edges_import_mlflow():
    for module in MODULES:
        tree = ast.parse(_source(module).read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        uses_mlflow = any(name.split(".")[0] == "mlflow" for name in names)
        assert uses_mlflow == (module in MLFLOW_EDGE), module


def test_the_library_trains_and_clusters_without_mlflow(tmp_path):
    script = f"""
import sys
sys.modules["mlflow"] = None  # any import of it fails
from mfrec.clustering.embeddings import item_frame
from mfrec.clustering.kmeans import ClusterConfig, cluster_movies
from mfrec.data.prepare import PrepareConfig, load_prepared, prepare
from mfrec.training.config import TrainConfig
from mfrec.workflow import train_and_evaluate
prepare(PrepareConfig("synthetic-5k"), r"{tmp_path / 'prepared'}", progress=False)
p = load_prepared(r"{tmp_path / 'prepared'}")
outcome = train_and_evaluate(p.train, p.val, p.test, p.movies, TrainConfig(epochs=3, progress=False))
rec = outcome.recommender
clusters = cluster_movies(item_frame(rec), rec.model.item_factors.detach().numpy(), ClusterConfig(min_ratings=1))
print(len(rec.recommend([int(rec.user_index.ids[0])], k=3).to_frame()), len(clusters.assignments))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=venv_env(PYTHONPATH=str(REPO_ROOT)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "3"


def test_the_logged_code_is_what_serving_imports(trained_small, tmp_path):
    """The copy of mfrec a logged model carries holds the serving modules and what they import,
    not training loops, evaluation, clustering or data download; and it answers on its own."""
    from mfrec.registry import served_code

    copy = served_code(tmp_path / "code")
    files = {str(p.relative_to(copy)) for p in copy.rglob("*.py")}
    assert {"serving/pyfunc.py", "serving/contract.py", "training/als.py", "training/model.py"} <= files
    for absent in ("training/fit.py", "training/adam.py", "workflow.py", "tracking.py", "data/download.py",
                   "evaluation/evaluate.py", "clustering/kmeans.py"):
        assert absent not in files
    trained_small.recommender.save(tmp_path / "bundle")
    script = f"""
import sys
sys.path.insert(0, r"{copy.parent}")
import pandas as pd
from mfrec.serving.contract import answer
from mfrec.serving.recommender import Recommender
rows = answer(Recommender.load(r"{tmp_path / 'bundle'}"), pd.DataFrame({{"userId": [1]}}), {{"task": "recommend", "k": 2}})
outside = [m.__file__ for name, m in sys.modules.items() if name.split(".")[0] == "mfrec"
           if not m.__file__.startswith(r"{copy}")]
print(len(rows), outside)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=venv_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "2 []"
