"""Where everything lives: every path and file name under ``artifacts/`` and ``reports/``.

One folder per stage, as in ``dvc.yaml``. Code asks a :class:`Layout` for a path instead of
spelling it, so moving an output means editing this file (and ``dvc.yaml``) only. Tests point a
layout at a temporary directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT = "checkpoint.safetensors"  # a training stage's resumable state (dcm.io.save_checkpoint)
HEALTHY_CHECKPOINT = "healthy-checkpoint.safetensors"  # a student's checkpoint at its newest healthy validation
EXPERT_RECORD = "expert.json"  # what a student stage trained, with which params (dcm.experts)
STUDENT_MODEL = "model"  # a full student: a diffusers model directory

def adapter_weights(stage: str) -> str:
    """An adapter expert's LoRA (+ copied timestep layers of the PE detail expert): ``detail.safetensors``."""
    return f"{stage}.safetensors"


def adapter_config(stage: str) -> str:
    """How to rebuild an adapter expert on its base: ``detail.json`` (``semantic.json`` when LoRA-only)."""
    return f"{stage}.json"


BUCKETS = "buckets.csv"  # loss and gradient norm by noise level (paper Fig. 2)
VALIDATION = "validation.csv"  # a training stage's checks on the validation split
MANIFEST = "manifest.json"  # a shard folder's index (trajectories, data)
LATENCY = "latency.json"

STUDENT_STAGES = ("semantic", "detail", "lcm", "pcm")


@dataclass(frozen=True)
class Layout:
    """The pipeline's folders below ``root`` (the repository root, or a test's directory)."""

    root: Path = Path(".")

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    # ---- stage outputs ----------------------------------------------------------------------
    @property
    def teacher(self) -> Path:
        return self.artifacts / "teacher"

    @property
    def teacher_model(self) -> Path:
        """The teacher as every later stage loads it (``dcm.models.load_backbone``)."""
        return self.teacher / "model"

    @property
    def trajectories(self) -> Path:
        return self.artifacts / "trajectories"

    @property
    def data(self) -> Path:
        """The ``dataset`` stage's encoded videos (``distill.source: data``); ``videos/``: the toy world's renders."""
        return self.artifacts / "data"

    def source(self, name: str) -> Path:
        """The folder of the training points ``distill.source`` names (dvc.yaml: ``artifacts/${distill.source}``)."""
        if name not in ("trajectories", "data"):
            raise ValueError(f"unknown training source {name!r}; known: trajectories, data")
        return self.artifacts / name

    @property
    def validation_set(self) -> Path:
        """The fixed validation set every student is compared with: prompts, noise, the teacher's samples."""
        return self.artifacts / "validation"

    def student(self, stage: str) -> Path:
        if stage not in STUDENT_STAGES:
            raise ValueError(f"unknown student stage {stage!r}; known: {', '.join(STUDENT_STAGES)}")
        return self.artifacts / stage

    @property
    def samples(self) -> Path:
        return self.artifacts / "samples"

    def export(self, fmt: str) -> Path:
        return self.artifacts / "export" / {"pipeline": "wan", "lora": "detail_lora"}[fmt]

    # ---- reports ----------------------------------------------------------------------------
    @property
    def teacher_report(self) -> Path:
        return self.reports / "teacher.md"

    @property
    def teacher_report_dir(self) -> Path:
        return self.reports / "teacher"

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def evaluation(self) -> Path:
        return self.reports / "evaluation"

    @property
    def report(self) -> Path:
        return self.reports / "report.md"

    @property
    def figures(self) -> Path:
        return self.reports / "figures"

    @property
    def boundary_suggestion(self) -> Path:
        return self.reports / "boundary_suggestion.json"

    @property
    def boundary_suggestion_figure(self) -> Path:
        return self.reports / "boundary_suggestion.png"

    @property
    def ablation_report(self) -> Path:
        return self.reports / "ablation.md"

    @property
    def boundary_figure(self) -> Path:
        return self.reports / "boundary.png"
