"""Trained students on disk: what a student stage writes, and how sampling and export load it.

A student stage (``semantic``, ``detail``, ``lcm``, ``pcm``) writes into its folder
(:class:`dcm.layout.Layout`):

* ``expert.json``, the :class:`StudentRecord`: role, kind (``full``, ``pe`` or ``none``), the
  phases and boundary it learned, every param its stage reads (``dcm.config.STAGE_PARAMS``) as it
  was when it trained, and fingerprints of its inputs (the trajectories; the semantic expert under
  a detail expert);
* a full student as a diffusers model directory (``model/``), or the PE detail expert as
  ``detail.safetensors`` + ``detail.json`` (:class:`dcm.experts.ParameterEfficientExpert`).

Everything that loads a student goes through :func:`load_student`, which compares the record
with the current params first: a sampler never switches experts at a boundary they were not
trained with, and the error names the key that differs and the stage to rerun.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dcm.config import Params, stage_values
from dcm.experts import ParameterEfficientExpert
from dcm.io import atomic_path, atomic_write_text
from dcm.layout import EXPERT_RECORD, MANIFEST, STUDENT_MODEL, Layout, adapter_config, adapter_weights
from dcm.models.base import Backbone
from dcm.sampling import METHODS, Sampler, SamplingError, method_sigmas

# Settings that do not change what a student learned, so a change needs no retraining.
NOT_LEARNED = ("distill.checkpoint_every", "distill.log_every", "distill.bucket_every", "distill.buckets",
               "distill.validate_every", "distill.validate_videos", "distill.collapse_variance_ratio",
               "distill.collapse_motion_ratio", "distill.collapse_psnr_drop",
               "launch.config_file", "trajectories.batch_size", "trajectories.shard_size", "dataset.batch_size",
               "dataset.shard_size")
#: what a student does not learn from under each ``distill.source`` (the other source's settings)
NOT_LEARNED_FROM = {
    "trajectories": ("dataset", "distill.caption_dropout"),
    "data": tuple(f"trajectories.{key}" for key in ("videos", "dtype", "store_every", "prompt_file", "seed")),
}


class StudentError(SamplingError):
    """A student that is missing, or that was trained with other params than params.yaml's."""


@dataclass
class StudentRecord:
    """What one student stage trained (``expert.json``)."""

    stage: str
    role: str
    kind: str  # "full": a diffusers model directory; "pe": LoRA + copies on the semantic expert (or Wan2.2's
    # transformer_2); "lora": a LoRA alone on the teacher transformer (distill.lora_only); "none"
    phases: list[list[int]]
    boundary: int | None
    trained_with: dict[str, Any]  # the stage's params (dotted keys), as they were
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> fingerprint
    summary: dict[str, Any] = field(default_factory=dict)  # steps, parameter counts, timing

    @property
    def fingerprint(self) -> str:
        payload = json.dumps({"trained_with": self.trained_with, "inputs": self.inputs}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def write(self, directory: Path) -> None:
        atomic_write_text(directory / EXPERT_RECORD, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path, stage: str) -> StudentRecord:
        path = directory / EXPERT_RECORD
        if not path.exists():
            raise StudentError(f"the {stage} student is missing: expected {path} (run `dvc repro {stage}` or "
                               f"`dcm {stage}` first)")
        data = json.loads(path.read_text())
        missing = [k for k in ("stage", "role", "kind", "trained_with") if k not in data]
        if missing:
            raise StudentError(f"{path} was written by an older dcm (no {', '.join(missing)}): rerun "
                               f"`dvc repro {stage}`")
        return cls(**data)


def learned_values(params: Params, stage: str) -> dict[str, Any]:
    """The params a student of ``stage`` depends on (its stage's params, minus :data:`NOT_LEARNED` and the
    settings of the training source it does not use)."""
    return stage_values(params, stage, ignore=NOT_LEARNED + NOT_LEARNED_FROM[params.distill.source])


def source_fingerprint(layout: Layout, source: str) -> str | None:
    """A hash of the manifest of the training source a student learns from (``distill.source``)."""
    manifest = layout.source(source) / MANIFEST
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.exists() else None


def check_record(record: StudentRecord, params: Params, layout: Layout) -> None:
    """Raise :class:`StudentError` when the student was trained with other params or inputs."""
    stage, where = record.stage, layout.student(record.stage)
    current = learned_values(params, stage)
    changed = sorted(k for k in set(current) | set(record.trained_with) if current.get(k) != record.trained_with.get(k))
    if changed:
        shown = "; ".join(f"{k} = {record.trained_with.get(k)!r} there, {current.get(k)!r} in params.yaml"
                          for k in changed[:4])
        more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
        raise StudentError(f"{where} was trained with other params: {shown}{more}. Rerun the {stage} stage "
                           f"(`dvc repro {stage}`, or `dcm {stage}`) before sampling or exporting")
    source = params.distill.source
    current_source = source_fingerprint(layout, source)
    if current_source and record.inputs.get(source) != current_source:
        raise StudentError(f"{where} was trained on other training points than {layout.source(source)} "
                           f"(distill.source = {source!r}): rerun `dvc repro {stage}`")
    if "semantic" in record.inputs:
        semantic = StudentRecord.read(layout.student("semantic"), "semantic")
        if semantic.fingerprint != record.inputs["semantic"]:
            raise StudentError(f"{where} was trained on another semantic expert than {layout.student('semantic')}: "
                               f"rerun `dvc repro {stage}`")


def save_full_model(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``model``'s config and ``state_dict`` (gathered from every process) as a diffusers
    model directory. ``save_pretrained`` reads ``model.state_dict()`` itself, which under FSDP is
    a collective that only the main process would join; shards are named as diffusers names them."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    model.save_config(path)
    split = split_torch_state_dict_into_shards(state_dict, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                                               max_shard_size="10GB")
    for filename, names in split.filename_to_tensors.items():
        with atomic_path(path / filename) as tmp:
            save_file({n: state_dict[n].contiguous() for n in names}, str(tmp), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        atomic_write_text(path / "diffusion_pytorch_model.safetensors.index.json", json.dumps(index, indent=2) + "\n")


def load_full_model(directory: Path, backbone: Backbone, stage: str) -> torch.nn.Module:
    """A fully fine-tuned student (``<stage>/model``), of the backbone's transformer class."""
    path = directory / STUDENT_MODEL
    if not (path / "config.json").exists():
        raise StudentError(f"no trained {stage} student at {path} (expected {path / 'config.json'}); run "
                           f"`dvc repro {stage}` first")
    return backbone.load_transformer(path)


def expert_base_name(teacher: Backbone, lora_only: bool, low_noise: bool) -> str:
    """What an adapter expert sits on: the PE detail expert on the semantic expert (paper Sec. 3.3), or
    on a two-expert teacher's own low-noise ``transformer_2``, which already knows the detail phase; a
    LoRA-only expert on the teacher transformer of its phase (``transformer`` or ``transformer_2``)."""
    two = teacher.teacher_expert(low_noise=True) is not teacher.teacher_expert()
    if lora_only:
        return "transformer_2" if two and low_noise else "transformer"
    return "transformer_2" if two else "semantic"


def expert_base(teacher: Backbone, layout: Layout, name: str, semantic: torch.nn.Module | None = None
                ) -> torch.nn.Module:
    """The base an adapter expert sits on (``name``, :func:`expert_base_name`): the trained semantic
    expert (``semantic`` if given, else loaded from ``layout``), or the teacher's own transformer
    module (not a copy: the expert adds its LoRA, switched off outside its calls)."""
    if name == "semantic":
        return semantic if semantic is not None else load_semantic(teacher, layout)
    if name == "transformer_2" and teacher.teacher_expert(low_noise=True) is teacher.teacher_expert():
        raise StudentError("this expert sits on a two-expert teacher's transformer_2, and the teacher has one "
                           "transformer: rerun its stage")
    return teacher.teacher_expert(low_noise=name == "transformer_2")


def load_adapter_expert(directory: Path, teacher: Backbone, layout: Layout, stage: str,
                        semantic: torch.nn.Module | None = None) -> ParameterEfficientExpert:
    """A PE or LoRA-only expert saved by ``stage`` in ``directory``, on its base (:func:`expert_base`)."""
    for name in (adapter_weights(stage), adapter_config(stage)):
        if not (directory / name).exists():
            raise StudentError(f"the {stage} adapter's {name} is missing: expected {directory / name} "
                               f"(rerun `dvc repro {stage}`)")
    name = ParameterEfficientExpert.base_of(directory, stage)
    return ParameterEfficientExpert.load(expert_base(teacher, layout, name, semantic), directory, stage)


def load_semantic(teacher: Backbone, layout: Layout) -> torch.nn.Module:
    """The trained semantic expert: a full model, or a LoRA on the teacher (``distill.lora_only``)."""
    directory = layout.student("semantic")
    if (directory / EXPERT_RECORD).exists() and StudentRecord.read(directory, "semantic").kind == "lora":
        return load_adapter_expert(directory, teacher, layout, "semantic")
    return load_full_model(directory, teacher, "semantic")


def load_student(stage: str, backbone: Backbone, params: Params, layout: Layout = Layout(),
                 semantic: torch.nn.Module | None = None) -> tuple[StudentRecord, torch.nn.Module | None]:
    """The checked record of ``stage`` and its model: a transformer, an adapter expert on its base
    (:func:`expert_base`; ``semantic``: the semantic expert when already loaded), or ``None`` when the
    stage trained nothing."""
    directory = layout.student(stage)
    record = StudentRecord.read(directory, stage)
    check_record(record, params, layout)
    if record.kind == "none":
        return record, None
    if record.kind in ("pe", "lora"):
        if semantic is None and (directory / adapter_config(stage)).exists() and \
                ParameterEfficientExpert.base_of(directory, stage) == "semantic":
            semantic = load_student("semantic", backbone, params, layout)[1]
        return record, load_adapter_expert(directory, backbone, layout, stage, semantic)
    return record, load_full_model(directory, backbone, stage)


def student_stages(method: str) -> tuple[str, ...]:
    """The student stages a method samples from."""
    return {"teacher": (), "undistilled": (), "lcm": ("lcm",), "pcm": ("pcm",), "dcm": ("semantic", "detail")}[method]


def check_method(method: str, params: Params, layout: Layout = Layout()) -> None:
    """Fail before any compute when a student the method needs is missing or stale."""
    if method not in METHODS:
        raise SamplingError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    for stage in student_stages(method):
        check_record(StudentRecord.read(layout.student(stage), stage), params, layout)


def load_sampler(method: str, steps: int, backbone: Backbone, params: Params, layout: Layout = Layout()) -> Sampler:
    """A method's model(s) from the stage folders, checked against params before any compute."""
    sigmas = method_sigmas(method, steps, backbone, params)
    check_method(method, params, layout)
    if method in ("teacher", "undistilled"):
        return Sampler(method, steps, sigmas, params.trajectories.guidance_scale, backbone.transformer,
                       guidance_scale_2=params.trajectories.guidance_scale_2)
    if method in ("lcm", "pcm"):
        return Sampler(method, steps, sigmas, 1.0, load_student(method, backbone, params, layout)[1])
    _, semantic = load_student("semantic", backbone, params, layout)
    _, detail = load_student("detail", backbone, params, layout, semantic=semantic)
    boundary_sigma = float(backbone.sigma_grid(params.flow.steps, params.flow.shift)[params.boundary])
    return Sampler(method, steps, sigmas, 1.0, semantic, detail, boundary_sigma)
