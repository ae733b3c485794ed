"""Parameter experiments: named grids queued in DVC, and their comparison from MLflow.

``dcm grid ablations`` queues the paper's Table 3 rows, ``dcm grid boundary`` a boundary sweep;
both run the queue with ``--jobs`` workers and fail loudly, naming the failed experiments
(``dvc exp run --run-all`` itself exits 0 even then). ``dcm compare`` turns the runs into
``reports/ablation.md`` and ``reports/boundary.png``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from dcm.config import Params
from dcm.report import ABLATION_ROWS, table

log = logging.getLogger(__name__)


class GridError(RuntimeError):
    """Some experiments of a grid failed (or never ran)."""


def ablation_grid() -> list[tuple[str, dict[str, object]]]:
    experiments = []
    for label, flags in ABLATION_ROWS:
        overrides = {f"ablation.{k}": str(v).lower() for k, v in zip(("od", "pe", "tc", "gf"), flags, strict=True)}
        experiments.append((label.lower().replace("+", "-"), overrides))
    return experiments


def parse_values(text: str) -> list[int]:
    """``30,35,40`` or a range ``20:45:5`` (end excluded, like Python and Hydra's ``range``)."""
    text = text.strip()
    if ":" in text:
        parts = [int(p) for p in text.split(":")]
        if len(parts) not in (2, 3):
            raise ValueError(f"range {text!r} must be start:end or start:end:step")
        values = list(range(*parts))
    else:
        values = [int(v) for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"{text!r} names no values")
    return values


def boundary_grid(values: list[int], params: Params) -> list[tuple[str, dict[str, object]]]:
    bad = [v for v in values if not 1 <= v <= params.flow.steps - 1]
    if bad:
        raise ValueError(f"boundary values {bad} are outside the grid [1, {params.flow.steps - 1}]")
    return [(f"boundary-{v}", {"boundary": v}) for v in values]


def _dvc(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run DVC from this environment; its queue workers find ``dvc`` and ``python`` on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["dvc", *args], capture_output=True, text=True, cwd=cwd, env=env)
    if check and result.returncode != 0:
        raise GridError(f"`dvc {' '.join(args)}` failed:\n{result.stdout}\n{result.stderr}")
    return result


def queue_status(cwd: Path | None = None) -> dict[str, str]:
    """Experiment name -> status (Queued, Running, Success, Failed) from ``dvc queue status``."""
    out = _dvc("queue", "status", cwd=cwd).stdout
    status = {}
    for line in out.splitlines():
        match = re.match(r"^\s*\S+\s+(\S+)\s+.*\b(Queued|Running|Success|Failed)\s*$", line)
        if match:
            status[match.group(1)] = match.group(2)
    return status


def run_grid(experiments: list[tuple[str, dict[str, object]]], params: Params, jobs: int = 1,
             prefix: str | None = None, cwd: Path | None = None) -> list[str]:
    """Queue and run every experiment; return their names, or raise naming the failed ones."""
    from dcm.tracking import ensure_experiment, repo_root

    for label, overrides in experiments:  # every experiment's params are valid before anything is queued
        nested: dict = {}
        for key, value in overrides.items():
            *sections, last = key.split(".")
            node = nested
            for section in sections:
                node = node.setdefault(section, {})
            node[last] = yaml.safe_load(str(value))
        try:
            params.with_overrides(nested)
        except ValueError as err:
            raise ValueError(f"experiment {label!r} ({overrides}) has invalid params: {err}") from None
    # The tracking database and experiment exist before any queued run starts, so parallel
    # runs never race to create the schema.
    ensure_experiment(params.tracking.experiment, (cwd or repo_root()).resolve())
    prefix = prefix or time.strftime("%m%d-%H%M%S")
    names = []
    for label, overrides in experiments:
        name = f"{prefix}-{label}"
        sets = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]
        _dvc("exp", "run", "--queue", "-n", name, *sets, cwd=cwd)
        names.append(name)
        log.info("queued %s (%s)", name, ", ".join(f"{k}={v}" for k, v in overrides.items()))
    run = _dvc("exp", "run", "--run-all", "--jobs", str(jobs), check=False, cwd=cwd)
    status = queue_status(cwd)
    failed = [n for n in names if status.get(n) != "Success"]
    if failed or run.returncode != 0:
        details = ", ".join(f"{n} ({status.get(n, 'not run')})" for n in failed)
        raise GridError(f"{len(failed)} of {len(names)} experiments failed: {details}. "
                        f"Inspect them with `dvc queue logs <name>`.\n{run.stderr[-2000:]}")
    return names


def mlflow_runs(params: Params) -> pd.DataFrame:
    """One row per DVC experiment (its parent run): flags, boundary and headline metrics."""
    import mlflow

    from dcm.tracking import ensure_experiment

    experiment = ensure_experiment(params.tracking.experiment)
    runs = mlflow.search_runs([experiment], filter_string="tags.`dcm.parent` = 'true'",
                              order_by=["start_time DESC"])
    if runs.empty:
        return runs
    frame = pd.DataFrame({
        "experiment": runs["tags.dvc.exp_name"],
        "od": runs["tags.ablation.od"] == "True", "pe": runs["tags.ablation.pe"] == "True",
        "tc": runs["tags.ablation.tc"] == "True", "gf": runs["tags.ablation.gf"] == "True",
        "boundary": runs["tags.boundary"].astype(int),
    })
    for column in runs.columns:
        if column.startswith("metrics.dcm_") or column.startswith("metrics.teacher_"):
            frame[column[len("metrics."):]] = runs[column]
    return frame


def dvc_runs(cwd: Path | None = None) -> pd.DataFrame:
    """The same table from ``dvc exp show --json`` (params and reports/metrics.json)."""
    data = json.loads(_dvc("exp", "show", "--json", cwd=cwd).stdout)
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
                   **{k: params["ablation"][k] for k in ("od", "pe", "tc", "gf")}, "boundary": params["boundary"]}
            for key, values in metrics.items():
                for name in ("total", "quality", "semantic", "latency_s"):
                    if name in values:
                        row[f"{key.replace('@', '_')}/{name}"] = values[name]
            rows.append(row)
    return pd.DataFrame(rows)


def ablation_markdown(frame: pd.DataFrame, steps: tuple[int, ...] = (4, 8)) -> str:
    """Table 3 analog: the latest experiment of each ablation setting (at the most common boundary)."""
    lines = ["# Ablations (paper Table 3 analog)", "",
             "DCM's toy-world scores per ablation setting; the latest DVC experiment of each setting "
             "at its boundary. Paper (HunyuanVideo, 4 steps, VBench Total %): none 80.30; OD 83.08; "
             "OD+PE 83.03; OD+PE+TC 83.42; OD+PE+GF 83.71; all four 83.80.", ""]
    if frame.empty:
        return "\n".join(lines + ["No experiments found.", ""])
    rows = []
    for label, flags in ABLATION_ROWS:
        match = frame[(frame.od == flags[0]) & (frame.pe == flags[1]) & (frame.tc == flags[2]) & (frame.gf == flags[3])]
        if match.empty:
            continue
        run = match.iloc[0]
        cells = [label, str(run["experiment"]), str(run["boundary"])]
        for k in steps:
            value = run.get(f"dcm_{k}/total")
            cells.append("–" if value is None or pd.isna(value) else f"{value:.4f}")
        rows.append(cells)
    header = ["setting", "experiment", "boundary", *[f"DCM@{k} Total" for k in steps]]
    return "\n".join(lines + [table(rows, header), ""])


def boundary_plot(frame: pd.DataFrame, path: Path, steps: tuple[int, ...] = (4, 8)) -> None:
    """Total against boundary for the full method (paper Fig. 10, right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dcm.io import atomic_path

    full = frame[frame.od & frame.pe & frame.tc & frame.gf] if not frame.empty else frame
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for k in steps:
        column = f"dcm_{k}/total"
        if not full.empty and column in full:
            points = full.dropna(subset=[column]).groupby("boundary")[column].first().sort_index()
            ax.plot(points.index, points.values, "o-", label=f"DCM, {k} steps")
    ax.set_xlabel("boundary (grid index)")
    ax.set_ylabel("Total (toy world)")
    ax.set_title("Total against boundary (cf. paper Fig. 10, right)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
