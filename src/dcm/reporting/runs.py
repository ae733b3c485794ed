"""The experiments to compare, as one table: from MLflow's parent runs or from ``dvc exp show``.

One row per DVC experiment: its name, the ablation flags, the boundary, the distillation seed, the
training source (``distill.source``) and the headline metrics (``dcm_4/total``, ...). Tables and figures read this frame only, so both
sources give the same Table 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dcm.config import Params
from dcm.dvc_command import dvc
from dcm.sampling import METHODS


def mlflow_runs(params: Params) -> pd.DataFrame:
    """One row per DVC experiment (its parent run, newest first): flags, boundary, seed, headline
    metrics, and whether its evaluate stage finished (``evaluated``; until then its metrics are partial)."""
    import mlflow

    from dcm.tracking import ensure_experiment

    experiment = ensure_experiment(params.tracking.experiment)
    runs = mlflow.search_runs([experiment], filter_string="tags.`dcm.parent` = 'true'",
                              order_by=["start_time DESC"])
    if runs.empty:
        return runs
    evaluated = mlflow.search_runs([experiment], filter_string="tags.`dcm.stage` = 'evaluate' and "
                                   "attributes.status = 'FINISHED'")
    frame = pd.DataFrame({
        "experiment": runs["tags.dvc.exp_name"],
        "od": runs["tags.ablation.od"] == "True", "pe": runs["tags.ablation.pe"] == "True",
        "tc": runs["tags.ablation.tc"] == "True", "gf": runs["tags.ablation.gf"] == "True",
        "boundary": runs["tags.boundary"].astype(int),
        "seed": runs["params.distill.seed"].astype(int) if "params.distill.seed" in runs else 0,
        "source": runs["params.distill.source"].fillna("trajectories") if "params.distill.source" in runs
        else "trajectories",
        "config": runs["tags.dcm.config"] if "tags.dcm.config" in runs else None,
        "run_id": runs["run_id"],
        "evaluated": runs["run_id"].isin(set(evaluated.get("tags.mlflow.parentRunId", []))),
    })
    for column in runs.columns:
        if column.startswith(tuple(f"metrics.{m}_" for m in METHODS)):
            frame[column[len("metrics."):]] = runs[column]
    return frame


def _config(params: dict) -> str | None:
    from dcm.config import ParamsError, parse_params
    from dcm.tracking import config_tags

    try:
        return config_tags(parse_params(params))["dcm.config"]
    except ParamsError:  # an experiment of an older params.yaml
        return None


def dvc_runs(cwd: Path | None = None) -> pd.DataFrame:
    """The same table from ``dvc exp show --json`` (params and reports/metrics.json)."""
    data = json.loads(dvc("exp", "show", "--json", cwd=cwd).stdout)
    rows = []
    for baseline in data:
        for entry in [baseline, *[e for exp in (baseline.get("experiments") or []) for e in exp.get("revs", [])]]:
            d = entry.get("data") or {}
            params = ((d.get("params") or {}).get("params.yaml") or {}).get("data") or {}
            metrics = ((d.get("metrics") or {}).get("reports/metrics.json") or {}).get("data") or {}
            if not params or not metrics:
                continue
            rev = entry.get("rev", "")
            row = {"experiment": entry.get("name") or (rev if rev == "workspace" else rev[:7]),
                   **{k: params["ablation"][k] for k in ("od", "pe", "tc", "gf")}, "boundary": params["boundary"],
                   "seed": params.get("distill", {}).get("seed", 0), "config": _config(params), "evaluated": True}
            for key, values in metrics.items():
                for name in ("total", "quality", "semantic", "latency_s"):
                    if name in values:
                        row[f"{key.replace('@', '_')}/{name}"] = values[name]
            rows.append(row)
    return pd.DataFrame(rows)


def per_video_tables(parent_run_ids: list[str]) -> list[pd.DataFrame] | None:
    """The evaluate stage's per-video table (``videos.csv``) of each DVC experiment's parent run, its
    newest evaluate run's; None when one of them has none."""
    import tempfile

    import mlflow

    tables = []
    for parent in parent_run_ids:
        child = mlflow.search_runs(search_all_experiments=True, order_by=["start_time DESC"], max_results=1,
                                   filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`dcm.stage` = 'evaluate'")
        if child.empty:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(run_id=child.run_id.iloc[0], artifact_path="videos.csv",
                                                           dst_path=tmp)
            except Exception:  # an older run without the table
                return None
            tables.append(pd.read_csv(path))
    return tables
