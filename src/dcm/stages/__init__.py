"""The pipeline's DVC stages: one module per stage (``dcm.stages.<module>``) with one entry function,
and :func:`run_stage`, the one way into them.

``stages/<module>.py`` (what ``dvc.yaml`` runs) and ``dcm <stage>`` both call :func:`run_stage`, which
sets up logging, reads and validates the params, checks the MLflow tracking server answers, re-launches the heavy stages under ``accelerate
launch`` when ``launch.*`` asks for it, calls the entry function and reports input errors
(:func:`dcm.errors.reporting_user_errors`). Every entry function opens one MLflow run and writes
its outputs under its own folder (:class:`dcm.layout.Layout`) atomically.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcm.config import STAGE_PARAMS, load_params
from dcm.errors import UsageError, reporting_user_errors
from dcm.tracking import check_tracking_server


@dataclass(frozen=True)
class Stage:
    """A DVC stage: which entry function runs it, and whether it can span several processes."""

    name: str  # as in dvc.yaml
    module: str  # dcm.stages.<module>, run by stages/<module>.py
    function: str  # the module's entry function: fn(params, *args)
    args: tuple[str, ...] = ()
    relaunch: bool = False  # re-launched under `accelerate launch` when launch.* asks for more processes

    @property
    def params(self) -> tuple[str, ...]:
        """The params sections and keys it reads (:data:`dcm.config.STAGE_PARAMS`)."""
        return STAGE_PARAMS[self.name]

    @property
    def script(self) -> str:
        """The script DVC runs, relative to the repository root."""
        return f"stages/{self.module}.py"

    @property
    def command(self) -> str:
        """dvc.yaml's ``cmd`` of the stage."""
        return " ".join(["python", self.script, *self.args])


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("teacher", "teacher", "run_teacher"),
    Stage("teacher_eval", "teacher_eval", "run_teacher_eval"),
    Stage("trajectories", "trajectories", "run_trajectories", relaunch=True),
    Stage("dataset", "dataset", "run_dataset", relaunch=True),
    Stage("validation", "validation", "run_validation"),
    Stage("boundary", "boundary", "run_boundary"),
    *(Stage(name, "distill", "run_distill", (name,), relaunch=True) for name in ("semantic", "detail", "lcm", "pcm")),
    Stage("sample", "sample", "run_sample"),
    Stage("evaluate", "evaluate", "run_evaluate"),
    Stage("report", "report", "run_report"),
)}

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    """INFO lines with time and logger name (DEBUG with ``verbose``), for the stages and the CLI."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)


def run_stage(name: str, params_path: str | Path = "params.yaml", verbose: bool = False,
              argv: Sequence[str] | None = None) -> Any:
    """Run the DVC stage ``name`` on the params in ``params_path`` and return what its entry function
    returns. An input error (:class:`dcm.errors.DcmError`) ends the process with one line and exit code 2;
    ``argv`` is what a re-launch under ``accelerate launch`` runs again (default: this process's)."""
    setup_logging(verbose)
    with reporting_user_errors(verbose):
        if name not in STAGES:
            raise UsageError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
        stage = STAGES[name]
        params = load_params(params_path)
        check_tracking_server()  # an unreachable server fails in seconds, before any work
        # imported by name, so that a stage runs (and DVC tracks, tests/test_layout.py) only its own
        # module, and dcm.launch only where it can re-launch
        if stage.relaunch:
            importlib.import_module("dcm.launch").relaunch(params, argv)
        entry = getattr(importlib.import_module(f"{__name__}.{stage.module}"), stage.function)
        return entry(params, *stage.args)
