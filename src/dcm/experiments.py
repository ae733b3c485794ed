"""Parameter experiments: named grids queued in DVC, and their comparison from MLflow.

``dcm grid ablations`` queues the paper's Table 3 rows, ``dcm grid boundary`` a boundary sweep;
both run the queue with ``--jobs`` workers and fail loudly, naming the failed experiments
(``dvc exp run --run-all`` itself exits 0 even then). ``dcm compare`` turns the runs into
``reports/ablation.md`` and ``reports/boundary.png``.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from pathlib import Path

import yaml

from dcm.config import Params, ParamsError
from dcm.dvc_command import GridError, dvc
from dcm.errors import UsageError
from dcm.reporting.tables import ABLATION_ROWS

log = logging.getLogger(__name__)


def ablation_grid() -> list[tuple[str, dict[str, object]]]:
    experiments = []
    for label, flags in ABLATION_ROWS:
        overrides = {f"ablation.{k}": str(v).lower() for k, v in zip(("od", "pe", "tc", "gf"), flags, strict=True)}
        experiments.append((label.lower().replace("+", "-"), overrides))
    return experiments


GRIDS = ("ablations", "boundary", "seeds")


def named_grid(name: str, values: str | None, params: Params,
               seeds: str | None = None) -> list[tuple[str, dict[str, object]]]:
    """The experiments of ``dcm grid NAME``: ``ablations``, ``boundary`` (over ``values``) or ``seeds``
    (``distill.seed`` over ``values``, default 0,1,2); ``seeds`` crosses a grid with those seeds."""
    if name == "ablations":
        grid = ablation_grid()
    elif name == "boundary":
        grid = boundary_grid(parse_values(values or "25,30,35,40,45"), params)
    elif name == "seeds":
        grid = seed_grid(parse_values(values or "0,1,2"))
    else:
        raise UsageError(f"unknown grid {name!r}; known: {', '.join(GRIDS)}")
    if seeds is None:
        return grid
    return [(f"{label}-s{seed}", {**overrides, "distill.seed": seed})
            for label, overrides in grid for seed in parse_values(seeds)]


def seed_grid(seeds: list[int]) -> list[tuple[str, dict[str, object]]]:
    """The same params at each ``distill.seed`` (batches, LoRA and discriminator initialisation)."""
    if any(seed < 0 for seed in seeds):
        raise UsageError(f"seeds {seeds}: a seed is a non-negative integer")
    return [(f"seed-{seed}", {"distill.seed": seed}) for seed in seeds]


def parse_values(text: str) -> list[int]:
    """``30,35,40`` or a range ``20:45:5`` (end excluded, like Python and Hydra's ``range``)."""
    text = text.strip()
    if ":" in text:
        parts = [_integer(p, text) for p in text.split(":")]
        if len(parts) not in (2, 3):
            raise UsageError(f"--values {text!r}: a range is start:end or start:end:step")
        values = list(range(*parts))
    else:
        values = [_integer(v, text) for v in text.split(",") if v.strip()]
    if not values:
        raise UsageError(f"--values {text!r} names no values")
    return values


def _integer(part: str, text: str) -> int:
    try:
        return int(part)
    except ValueError:
        raise UsageError(f"--values {text!r}: {part!r} is not an integer") from None


def boundary_grid(values: list[int], params: Params) -> list[tuple[str, dict[str, object]]]:
    bad = [v for v in values if not 1 <= v <= params.flow.steps - 1]
    if bad:
        raise UsageError(f"boundary values {bad} are outside the grid [1, {params.flow.steps - 1}] "
                         f"(flow.steps = {params.flow.steps})")
    return [(f"boundary-{v}", {"boundary": v}) for v in values]


def queue_status(cwd: Path | None = None) -> dict[str, str]:
    """Experiment name -> status (Queued, Running, Success, Failed) from ``dvc queue status``."""
    out = dvc("queue", "status", cwd=cwd).stdout
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
        except ParamsError as err:
            raise ParamsError(f"experiment {label!r} ({overrides}) has invalid params: {err}") from None
    # The tracking database and experiment exist before any queued run starts, so parallel
    # runs never race to create the schema.
    ensure_experiment(params.tracking.experiment, (cwd or repo_root()).resolve())
    prefix = prefix or time.strftime("%m%d-%H%M%S")
    names = []
    for label, overrides in experiments:
        name = f"{prefix}-{label}"
        sets = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]
        dvc("exp", "run", "--queue", "-n", name, *sets, cwd=cwd)
        names.append(name)
        log.info("queued %s (%s)", name, ", ".join(f"{k}={v}" for k, v in overrides.items()))
    run = dvc("exp", "run", "--run-all", "--jobs", str(jobs), check=False, cwd=cwd)
    status = queue_status(cwd)
    failed = [n for n in names if status.get(n) != "Success"]
    if failed or run.returncode != 0:
        details = ", ".join(f"{n} ({status.get(n, 'not run')})" for n in failed)
        raise GridError(f"{len(failed)} of {len(names)} experiments failed: {details}. "
                        f"Inspect them with `dvc queue logs <name>`.\n{run.stderr[-2000:]}")
    return names
