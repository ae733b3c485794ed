"""MLflow bookkeeping: one run per stage execution, kept at the repository root.

DVC runs queued experiments in a temporary copy of the repository, so every path here is
resolved against the real root (``DVC_ROOT`` when DVC sets it), never the working directory.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from mlflow import MlflowClient

from dcm.config import Params
from dcm.errors import DcmError

#: seconds a tracking server gets to answer before a stage gives up on it
SERVER_CHECK_TIMEOUT_S = 5.0


class TrackingServerError(DcmError, ConnectionError):
    """``MLFLOW_TRACKING_URI`` names a server that does not answer."""


def repo_root() -> Path:
    """The real repository root: ``DVC_ROOT``, else git's top level, else the working directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip()).resolve()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return Path.cwd().resolve()


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def check_tracking_server(uri: str | None = None) -> None:
    """Fail in seconds when the tracking store is a server that does not answer, before a stage does
    any work: MLflow itself retries a refused connection for minutes without a word. A local store
    (a SQLite file, a folder) needs no check."""
    import ssl
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    uri = uri or tracking_uri()
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_CHECK_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # it answers (a server without /health, or behind a proxy); MLflow reports what else is wrong
    except (urllib.error.URLError, OSError) as err:  # refused, unknown host, no answer in time
        reason = getattr(err, "reason", None) or err
        if isinstance(reason, ssl.SSLError):
            return  # it answers; MLflow has its own TLS settings (MLFLOW_TRACKING_INSECURE_TLS, ..._CERT_PATH)
        raise TrackingServerError(f"MLFLOW_TRACKING_URI = {uri}: no MLflow server answers there ({reason}); start it, "
                                  "set MLFLOW_TRACKING_URI to a running server, or unset it to track into mlflow.db "
                                  "at the repository root") from None


def git_revision(root: Path) -> str:
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


#: MLflow's tag for what an experiment holds; "custom_model_development" makes its UI open the runs
#: table (training runs), not the GenAI overview of traces it shows an experiment of unknown kind
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _store_lock(uri: str) -> contextlib.AbstractContextManager:
    """A lock beside a SQLite store: MLflow creates a fresh store's tables on first use, and two
    processes doing that at once (``dcm grid --jobs 2`` on a fresh clone) fail with "duplicate
    column name"."""
    if uri.startswith("sqlite:///"):
        return FileLock(uri.removeprefix("sqlite:///") + ".lock")
    return contextlib.nullcontext()


def ensure_experiment(name: str, root: Path | None = None) -> str:
    """Create (once) the experiment with its artifacts under ``<root>/mlartifacts``, tagged as
    training runs (:data:`EXPERIMENT_KIND`)."""
    root = root or repo_root()
    uri = tracking_uri(root)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlflow.create_experiment(name, artifact_location=(root / "mlartifacts" / name).as_uri(),
                                            tags=dict([EXPERIMENT_KIND]))
        except mlflow.exceptions.MlflowException:  # created by a concurrent process in between
            experiment = mlflow.get_experiment_by_name(name)
    if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # made by an older dcm
        MlflowClient().set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    return experiment.experiment_id


def experiment_name() -> str:
    """The DVC experiment this process runs for (``workspace`` outside ``dvc exp run``)."""
    return os.environ.get("DVC_EXP_NAME", "workspace")


#: params that say how a run is executed or tracked, not what it computes
NOT_CONFIG = ("tracking", "launch", "sample.latency_batch", "sample.latency_repeats")


def config_tags(params: Params) -> dict[str, str]:
    """``dcm.params``: a fingerprint of every param that changes results; ``dcm.config``: the same
    without ``distill.seed``, so runs that differ only by seed group together (mean ± sd)."""
    from dcm.config import fingerprint

    def values(ignore: tuple[str, ...]) -> dict:
        return {k: v for k, v in params.flat().items() if not any(k == n or k.startswith(f"{n}.") for n in ignore)}

    return {"dcm.params": fingerprint(values(NOT_CONFIG)), "dcm.config": fingerprint(values((*NOT_CONFIG,
                                                                                             "distill.seed")))}


def parent_run(experiment_id: str, params: Params, tags: dict[str, str]) -> str:
    """The run that groups every stage of one DVC experiment (one set of params), created by its
    first stage.

    Stages of one experiment run one after another, so looking it up by its tags is race-free;
    parallel experiments have different names.
    """
    client = MlflowClient()
    name, revision = tags["dvc.exp_name"], tags["git.revision"]
    tags = {**tags, **config_tags(params)}
    query = (f"tags.`dcm.parent` = 'true' and tags.`dvc.exp_name` = '{name}' "
             f"and tags.`git.revision` = '{revision}' and tags.`dcm.params` = '{tags['dcm.params']}'")
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=name, tags={**tags, "dcm.parent": "true"})
    for key, value in params.flat().items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, params: Params, extra_tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun | None]:
    """An MLflow run for one stage execution, nested under its DVC experiment's parent run,
    tagged, and with every param under its dotted key.

    Under ``accelerate launch`` only the main process opens a run; the others yield ``None``.
    """
    import torch
    from accelerate import PartialState

    # the first PartialState fixes the process group for the whole process: on a CPU-only machine it
    # must be told so, or every launched process would think it is alone and the main one
    if not PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        yield None
        return
    root = repo_root()
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    tags = {
        "dvc.exp_name": experiment_name(),
        "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", git_revision(root)),
        "git.revision": git_revision(root),
        "boundary": str(params.boundary),
        **{f"ablation.{k}": str(v) for k, v in params.ablation.model_dump().items()},
    }
    parent = parent_run(experiment_id, params, tags)
    tags.update({"dcm.stage": stage, **(extra_tags or {})})
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags, parent_run_id=parent) as run:
        mlflow.log_params(params.flat())
        yield run


def log_headline(metrics: dict[str, Any]) -> None:
    """Log metrics on the active run's parent (the DVC experiment's run), for comparing experiments."""
    run = mlflow.active_run()
    parent = run and run.data.tags.get("mlflow.parentRunId")
    if parent:
        client = MlflowClient()
        for key, value in metrics.items():
            client.log_metric(parent, metric_name(key), float(value))


def metric_name(key: str) -> str:
    """MLflow's name for a metric: ``dcm@4/total`` becomes ``dcm_4/total`` ('@' is not allowed)."""
    return key.replace("@", "_")


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log the numeric entries of ``metrics`` (others are skipped) to the active run."""
    numeric = {metric_name(k): float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if numeric and mlflow.active_run() is not None:
        mlflow.log_metrics(numeric, step=step)
