"""The README's library example runs as printed (with the test data's path) and gives the
figures the README and docs/results.md quote."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO_ROOT, venv_env


def test_library_example_runs_and_scores_as_documented(shared_zip, tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Using the library without MLflow", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert '"ml-latest-small.zip"' in code
    code = code.replace('"ml-latest-small.zip"', repr(str(shared_zip)))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=venv_env())
    assert done.returncode == 0, done.stderr[-3000:]
    rmse, ndcg = map(float, done.stdout.splitlines()[0].split())
    assert abs(rmse - 0.8193) < 0.001 and abs(ndcg - 0.3115) < 0.001
    assert "rank" in done.stdout and len(done.stdout.splitlines()) == 7  # the figures, a header, 5 films
