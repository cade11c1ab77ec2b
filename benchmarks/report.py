"""The benchmark's results as one markdown table and as flat MLflow metrics."""

from __future__ import annotations

import math


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def markdown_table(results: dict) -> str:
    """The results as one markdown table (section | measurement | value | notes)."""
    rows = []

    def add(section, what, value, note=""):
        rows.append(f"| {section} | {what} | {value} | {note} |")

    for name in results:
        if isinstance(results.get(name), dict) and "failed" in results[name]:
            add(name, "FAILED", "", results[name]["failed"].replace("|", "/").replace("\n", " ")[:300])
    ok = {name: block for name, block in results.items() if not (isinstance(block, dict) and "failed" in block)}
    nb, mf, cmp_ = ok.get("notebook"), ok.get("mfrec"), ok.get("compare")
    if nb:
        label = "extrapolated" if nb["full_run_seconds_is_extrapolated"] else "measured"
        add("notebook loop", "epoch time", f"{nb['mean_epoch_seconds']:.2f} s",
            f"mean of {nb['epochs_run']} epoch(s), {nb['train_rows']:,} rows, batch {nb['batch_size']}")
        add("notebook loop", f"{nb['full_epochs']}-epoch time ({label})", f"{nb['full_run_seconds']:.1f} s",
            f"{label}: {nb['mean_epoch_seconds']:.2f} s x {nb['full_epochs']}" if label == "extrapolated"
            else "all epochs run")
        add("notebook loop", f"test RMSE after {nb['epochs_run']} epoch(s)", f"{nb['test_rmse']:.4f}",
            "unclipped, as the notebook computed it")
        add("notebook loop", "throughput", f"{nb['ratings_per_second']:,.0f} ratings/s", "")
    if mf:
        add("mfrec default", "sweep time", f"{mf['median_epoch_seconds'] * 1000:.1f} ms",
            f"a fit() from scratch on train+val ({mf['fit_seconds']:.3f} s) per sweep, {mf['refit_rows']:,} rows, "
            f"solver {mf['config'].get('solver', 'adam')}")
        runs = mf.get("train_seconds_runs", [mf["train_seconds"]])
        selected = "the chosen trial's fit" if mf["select_seconds"] < 1e-3 else f"{mf['select_seconds']:.3f} s"
        add("mfrec default", "train_seconds", f"{mf['train_seconds']:.3f} s",
            f"median of {len(runs)} run(s) (first {runs[0]:.3f} s): settings search, {mf['search_trials']} trials "
            f"({mf['search_seconds']:.3f} s), sweep count {mf['best_epoch']} ({selected}), that "
            f"fit continued {mf['refit_sweeps']} sweeps on {mf['refit_rows']:,} rows ({mf['refit_seconds']:.3f} s)")
        add("mfrec default", "test RMSE", f"{mf['test_rmse']:.4f}", f"NDCG@10 {mf['test_ndcg_at_10']:.4f}")
    if cmp_:
        add("headline", "notebook 128-epoch time / mfrec train_seconds",
            f"**{cmp_['notebook_full_over_mfrec_train']:.1f}x**",
            "notebook time " + ("extrapolated" if nb and nb["full_run_seconds_is_extrapolated"] else "measured"))
        add("headline", "notebook epoch / mfrec sweep", f"{cmp_['notebook_epoch_over_mfrec_epoch']:.1f}x", "")
        if "surprise_fit_over_mfrec_train" in cmp_:
            add("headline", "Surprise SVD fit / mfrec train_seconds", f"{cmp_['surprise_fit_over_mfrec_train']:.2f}x",
                "> 1: mfrec's train step (settings search + refit) is faster than Surprise's fit")
            add("headline", "Surprise SVD fit / mfrec fit()", f"{cmp_['surprise_fit_over_mfrec_fit']:.2f}x",
                "like for like: one fit from scratch with fixed settings on train+val, data preparation excluded")
    sp = ok.get("surprise")
    if sp:
        if "skipped" in sp:
            add("Surprise SVD", "skipped", "", sp["skipped"])
        else:
            add("Surprise SVD", "fit time", f"{sp['fit_seconds']:.3f} s",
                f"median of {len(sp.get('fit_seconds_runs', [0]))} fit(s); n_factors={sp['n_factors']}, "
                f"{sp['n_epochs']} epochs, random_state={sp['random_state']}, surprise {sp['version']}")
            add("Surprise SVD", "test RMSE", f"{sp['test_rmse']:.4f}", "same split, train+val as training")
    tp = ok.get("throughput")
    if tp:
        if "skipped" in tp:
            add("scale", "skipped", "", tp["skipped"])
        else:
            cfg = tp["config"]
            label = f"default config, implicit_weight={cfg['implicit_weight']}"
            add("scale", f"dataset {tp['dataset']}",
                f"{tp['ratings']:,} ratings", f"{tp['users']:,} users x {tp['items']:,} items")
            add("scale", f"epoch throughput ({label})", f"{tp['ratings_per_second']:,.0f} ratings/s",
                "epoch times " + ", ".join(f"{s:.1f} s" for s in tp["epoch_seconds"])
                + "; first includes setup; rate from the later epoch(s)" if len(tp["epoch_seconds"]) > 1
                else "one epoch, includes setup")
            add("scale", "peak RSS (training child)", _gib(tp["peak_rss_bytes"]),
                f"{tp['peak_rss_over_raw']:.2f}x the raw arrays ({_gib(tp['raw_bytes'])}); "
                f"{tp['peak_rss_above_imports_over_raw']:.2f}x above the {_gib(tp['rss_after_imports_bytes'])} "
                "of interpreter + torch")
            if "busy" in tp:
                add("busy machine", f"one sweep over {tp['ratings']:,} ratings (k={cfg['n_factors']}), quiet / beside "
                    f"{tp['busy']['hogs']} CPU-bound processes",
                    f"{tp['steady_epoch_seconds']:.2f} s / {tp['busy']['steady_epoch_seconds']:.2f} s",
                    f"**{tp['busy']['busy_over_quiet']:.2f}x**")
            for extra in tp.get("variants", []):
                add("scale", f"epoch throughput ({extra['label']})", f"{extra['ratings_per_second']:,.0f} ratings/s",
                    f"epoch times {', '.join(f'{s:.1f} s' for s in extra['epoch_seconds'])}; peak RSS "
                    f"{_gib(extra['peak_rss_bytes'])} ({extra['peak_rss_over_raw']:.2f}x raw)")
    _ranking_rows(add, ok)
    sv = ok.get("serving")
    if sv:
        if "skipped" in sv:
            add("REST", "skipped", "", sv["skipped"])
        else:
            for model in ("mfrec", "identity"):
                for run in sv.get(model, []):
                    workers = run.get("workers", 1)
                    add("REST", f"{model}, {run['concurrency']} client(s)" + (f", {workers} workers" if workers > 1 else ""),
                        f"p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, {run['requests_per_second']:.0f} req/s",
                        f"{run['requests']} requests, {run['errors']} errors")
    head = ["| section | measurement | value | notes |", "|---|---|---|---|"]
    return "\n".join(head + rows) + "\n"


def _ranking_rows(add, ok: dict) -> None:
    """Rows of the contention, peer, tune and sweep sections."""
    mf = ok.get("mfrec") or {}
    if "busy_training" in ok:
        b = ok["busy_training"]
        add("busy machine", "default train step (search included), quiet / beside 2 CPU-bound processes",
            f"{b['quiet_seconds']:.2f} s / {b['busy_seconds']:.2f} s", f"**{b['busy_over_quiet']:.2f}x**")
    if "peers" in ok:
        ease, als = ok["peers"]["ease"], ok["peers"]["implicit_als"]
        add("ranking", "mfrec default (k=8, settings chosen on validation): test NDCG@10",
            f"{mf.get('test_ndcg_at_10', float('nan')):.4f}", f"test RMSE {mf.get('test_rmse', float('nan')):.4f}")
        add("ranking", "EASE: test NDCG@10", f"{ease['test_ndcg_at_10']:.4f}",
            f"lambda {ease['lambda']:g} chosen on validation; {ease['items']:,} items")
        if "skipped" in als:
            add("ranking", "implicit ALS", "skipped", als["skipped"])
        else:
            add("ranking", "implicit ALS: test NDCG@10", f"{als['test_ndcg_at_10']:.4f}",
                f"{als['params']} chosen on validation over {als['trials']} settings")
    if "tune" in ok:
        t = ok["tune"]
        add("ranking", "-e tune's search at its default budget: test NDCG@10", f"**{t['test_ndcg_at_10']:.4f}**",
            f"k={t['n_factors']}, test RMSE {t['test_rmse']:.4f}; {t['trials']} trials in {t['search_seconds']:.0f} s; "
            + ", ".join(f"{k}={v:g}" for k, v in t["chosen"].items()))
    if "custom_pipeline" in ok:
        c = ok["custom_pipeline"]
        add("your own data", f"mlflow run: dataset=custom (parquet, text ids) / {c['dataset']} itself",
            f"{c['custom_seconds']:.1f} s / {c['synthetic_seconds']:.1f} s",
            f"**{c['custom_over_synthetic']:.2f}x**; {c['ratings']:,} ratings")
    if "custom_memory" in ok:
        c = ok["custom_memory"]
        add("your own data", f"prepare step on {c['dataset']}'s ratings as parquet with text ids",
            f"{c['prepare_seconds']:.1f} s; peak RSS {_gib(c['peak_rss'])}",
            f"{c['peak_over_raw']:.2f}x the prepared arrays ({_gib(c['raw_bytes'])}; "
            f"{c['peak_above_imports_over_raw']:.2f}x above the imports); {c['rows']:,} rows")
    for name, block in ok.items():
        if not name.startswith("sweeps_"):
            continue
        label = f"{block['dataset']}{' beside 2 CPU-bound processes' if block['busy'] else ''}"
        for row in block["by_factors"]:
            if row["ratio"] is None:
                add("sweep vs implicit", f"{label}, k={row['factors']} ({row['als_solve']})",
                    f"{row['mfrec_sweep_seconds']:.3f} s", "implicit not installed: pip install -e '.[bench]'")
                continue
            add("sweep vs implicit", f"{label}, k={row['factors']} ({row['als_solve']})",
                f"{row['mfrec_sweep_seconds']:.3f} s / {row['implicit_sweep_seconds']:.3f} s",
                f"**{row['ratio']:.2f}x** implicit's CG ALS sweep ({block['ratings']:,} ratings)")


def flat_metrics(results: dict) -> dict:
    """Finite numeric headline figures as MLflow metric names."""
    picks = {
        "notebook": ["mean_epoch_seconds", "full_run_seconds", "test_rmse", "ratings_per_second"],
        "mfrec": ["median_epoch_seconds", "train_seconds", "fit_seconds", "test_rmse", "test_ndcg_at_10",
                  "ratings_per_second"],
        "compare": ["notebook_full_over_mfrec_train", "notebook_epoch_over_mfrec_epoch",
                    "surprise_fit_over_mfrec_train", "surprise_fit_over_mfrec_fit"],
        "surprise": ["fit_seconds", "test_rmse"],
        "throughput": ["ratings_per_second", "steady_epoch_seconds", "peak_rss_bytes", "peak_rss_over_raw",
                       "peak_rss_above_imports_over_raw", "raw_bytes"],
    }
    out = {}
    for section, keys in picks.items():
        block = results.get(section) or {}
        for key in keys:
            value = block.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[f"{section}_{key}"] = float(value)
    for variant in (results.get("throughput") or {}).get("variants", []):
        if variant.get("config", {}).get("implicit_weight") == 0:
            for key in ("ratings_per_second", "peak_rss_over_raw"):
                out[f"throughput_rating_only_{key}"] = float(variant[key])
    for name, block in results.items():
        if name.startswith("sweeps_") and "by_factors" in (block or {}):
            suffix = name[len("sweeps_"):].replace("-", "_")
            for row in block["by_factors"]:
                out[f"sweep_seconds_{suffix}_k{row['factors']}"] = float(row["mfrec_sweep_seconds"])
                if row["ratio"] is not None:
                    out[f"sweep_ratio_{suffix}_k{row['factors']}"] = float(row["ratio"])
    for key, path in (("busy_training_over_quiet", ("busy_training", "busy_over_quiet")),
                      ("ease_test_ndcg_at_10", ("peers", "ease", "test_ndcg_at_10")),
                      ("implicit_als_test_ndcg_at_10", ("peers", "implicit_als", "test_ndcg_at_10")),
                      ("tune_test_ndcg_at_10", ("tune", "test_ndcg_at_10")),
                      ("throughput_busy_over_quiet", ("throughput", "busy", "busy_over_quiet")),
                      ("custom_over_synthetic", ("custom_pipeline", "custom_over_synthetic")),
                      ("custom_prepare_peak_over_raw", ("custom_memory", "peak_over_raw")),
                      ("custom_prepare_seconds", ("custom_memory", "prepare_seconds"))):
        value = results
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    serving = results.get("serving") or {}
    for model in ("mfrec", "identity"):
        for run in serving.get(model, []) if isinstance(serving.get(model), list) else []:
            workers = run.get("workers", 1)
            prefix = f"serve_{model}_" + (f"w{workers}_" if workers > 1 else "")
            for key in ("p50_ms", "p99_ms", "requests_per_second"):
                out[f"{prefix}c{run['concurrency']}_{key}"] = float(run[key])
    return out
