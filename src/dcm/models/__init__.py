"""Backbone adapters: everything dcm needs to know about a text-to-video model.

``load_backbone`` opens a teacher directory. The tiny teacher's directory holds the model itself;
for a real checkpoint the ``teacher`` stage writes a ``backbone.json`` that names the adapter
(``kind``) and the local diffusers directory (``path``), so every later stage loads it the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from dcm.models.base import Backbone, BackboneError, TeacherMismatchError, check_model_dir
from dcm.models.cogvideox import CogVideoXBackbone
from dcm.models.hunyuan import HunyuanVideoBackbone
from dcm.models.tiny import TinyBackbone, build_tiny_backbone
from dcm.models.wan import TwoExpertTransformer, WanBackbone

#: the registry, by ``kind``: a new backbone is its module (a :class:`Backbone` subclass holding every fact
#: about the family) and its entry here; ``model.backbone`` takes these names
BACKBONES: dict[str, type[Backbone]] = {cls.kind: cls for cls in (
    TinyBackbone,
    WanBackbone,
    CogVideoXBackbone,
    HunyuanVideoBackbone,
)}

META = "backbone.json"


def backbone_class(kind: str) -> type[Backbone]:
    if kind not in BACKBONES:
        raise BackboneError(f"unknown backbone {kind!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[kind]


def load_backbone(path: str | Path, kind: str | None = None, **options) -> Backbone:
    """Load the backbone in ``path``: a directory with ``backbone.json``, or a diffusers directory of ``kind``."""
    path = Path(path)
    meta = path / META
    if meta.exists():
        info = json.loads(meta.read_text())
        kind = info["kind"]
        options = {**info.get("options", {}), **options}
        path = Path(info.get("path", path))
    elif kind is None:
        raise BackboneError(f"{meta} is missing: run `dcm teacher` or `dvc repro teacher` to create the teacher "
                            "directory, or pass the backbone kind for a plain diffusers directory")
    return backbone_class(kind).from_pretrained(path, **options)


def check_teacher_dir(path: str | Path) -> None:
    """Fail fast, before any loading, when the teacher directory (or the checkpoint it points at) is
    missing or incomplete."""
    path = Path(path)
    meta = path / META
    if not meta.exists():
        raise BackboneError(f"{meta} is missing: run `dvc repro teacher` (or `dcm teacher`) to create the teacher "
                            "directory")
    info = json.loads(meta.read_text())
    backbone_class(info["kind"]).check(info.get("path", path))


def teacher_expert_boundary(path: str | Path) -> float | None:
    """The expert switch of the teacher in directory ``path`` (:meth:`Backbone.expert_boundary`), read
    before loading any weight: None for a teacher with one transformer."""
    check_teacher_dir(path)
    info = json.loads((Path(path) / META).read_text())
    return backbone_class(info["kind"]).expert_boundary(info.get("path", path))


def teacher_takes_images(path: str | Path, optional: bool = False) -> bool:
    """Whether the teacher in directory ``path`` is an image-to-video model (:meth:`Backbone.takes_images`;
    ``optional``: or can be conditioned on images, :meth:`Backbone.accepts_images`), read before loading
    any weight."""
    info = json.loads((Path(path) / META).read_text())
    adapter = backbone_class(info["kind"])
    return (adapter.accepts_images if optional else adapter.takes_images)(info.get("path", path))


def check_guidance_scale_2(path: str | Path, key: str, value: float | None) -> None:
    """Fail before loading when ``key`` (a CFG scale for ``transformer_2``) is set for a teacher with
    one transformer, which has nothing to apply it to."""
    if value is not None and teacher_expert_boundary(path) is None:
        raise TeacherMismatchError(f"{key} = {value} is the CFG scale of a two-expert teacher's transformer_2 (a "
                                   "Wan2.2 directory whose model_index.json names transformer_2 and boundary_ratio); "
                                   f"the teacher in {path} has one transformer: set {key} to null")


def write_backbone_link(directory: str | Path, kind: str, source: str | Path, **options) -> None:
    """Point a teacher directory at a local diffusers checkpoint (real backbones are not copied)."""
    from dcm.io import write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / META, {"kind": kind, "path": str(Path(source).resolve()), "options": options})


__all__ = ["BACKBONES", "Backbone", "BackboneError", "CogVideoXBackbone", "HunyuanVideoBackbone", "TeacherMismatchError",
           "TinyBackbone", "TwoExpertTransformer", "WanBackbone", "backbone_class", "build_tiny_backbone",
           "check_guidance_scale_2", "check_model_dir", "teacher_takes_images", "check_teacher_dir", "load_backbone",
           "teacher_expert_boundary", "write_backbone_link"]
