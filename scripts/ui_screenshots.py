"""Pictures of the MLflow UI on real runs: the runs list, two pipelines compared, the registered model.

    python scripts/ui_screenshots.py --data-path path/to/ml-latest-small.zip [--out docs/screenshots]

Runs two pipelines (k=8; k=32) with `mlflow run . --env-manager local` into a fresh
sqlite store, starts `mlflow server` on it (loopback), and saves PNGs taken by headless
Chromium (Debian's package: `apt-get install chromium`) driven by Playwright
(`pip install -e ".[ui]"`; it uses that Chromium and downloads no browser).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.served import free_port, stop_process, wait_http  # noqa: E402

EXPERIMENT = "mfrec-demo"
PIPELINES = (["n_factors=8"], ["n_factors=32"])
COMPARED = ("test_rmse", "test_ndcg_at_10", "cluster_genre_purity", "train_seconds")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        sys.exit("headless Chromium is needed: apt-get install chromium")
    return found


def screenshots(browser: str, pages: dict, out: Path) -> None:
    """Open each page, dismiss the UI's assistant and tips, save a PNG (the whole page)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=browser, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = chrome.new_page(viewport={"width": 1600, "height": 1000})
        for name, url in pages.items():
            page.goto(url)
            page.wait_for_timeout(6000)  # the UI renders after its API calls
            if name == "compare.png":  # the parallel coordinates of the metrics people compare
                metrics = page.get_by_role("combobox").nth(1)
                for metric in COMPARED:
                    metrics.click()
                    metrics.fill(metric)
                    page.wait_for_timeout(300)
                    page.keyboard.press("Enter")
                page.keyboard.press("Escape")
                chips = page.locator("[class*=select-selection-item]", has_text="system/")
                while chips.count():  # the system metric the view picks by default
                    chips.first.locator("[class*=remove]").first.click()
                    page.wait_for_timeout(300)
            for button in ("Got it", "Close"):
                found = page.get_by_role("button", name=button)
                if found.count():
                    found.first.click()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out / name))
            print(f"saved {out / name}")
        chrome.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-path", required=True, help="ml-latest-small.zip (or its folder)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = ap.parse_args()
    browser = chromium()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="mfrec-ui-") as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        for params in PIPELINES:
            cmd = [str(bin_dir / "mlflow"), "run", str(ROOT), "--env-manager", "local", "--experiment-name",
                   EXPERIMENT, "-P", f"data_path={Path(args.data_path).resolve()}"]
            for p in params:
                cmd += ["-P", p]
            subprocess.run(cmd, cwd=tmp, env=env, check=True, capture_output=True, timeout=600)
        import mlflow

        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        tops = [r.info.run_id for r in client.search_runs([experiment], order_by=["attributes.start_time ASC"])
                if "mlflow.parentRunId" not in r.data.tags]
        port = free_port()
        server = subprocess.Popen([str(bin_dir / "mlflow"), "server", "--workers", "1", "--host", "127.0.0.1",
                                   "--port", str(port), "--backend-store-uri", uri],
                                  cwd=tmp, env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/health", timeout=60, proc=server)
            runs = urllib.parse.quote(json.dumps(tops))
            pages = {
                "runs.png": f"{base}/#/experiments/{experiment}/runs",
                "compare.png": f"{base}/#/compare-runs?runs={runs}&experiments={urllib.parse.quote(json.dumps([experiment]))}",
                "model.png": f"{base}/#/models/mfrec",
            }
            screenshots(browser, pages, out)
        finally:
            stop_process(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
