"""The backbone interface: everything dcm needs to know about a text-to-video model.

Every stage talks to a model only through :class:`Backbone`, so the tiny teacher and the real
checkpoints (Wan2.1, CogVideoX, HunyuanVideo) share one code path. Conventions:

* latents are ``(B, C, T, H, W)`` and live in *flow coordinates*:
  ``x_sigma = (1 - sigma) * x0 + sigma * eps``. A model trained otherwise (CogVideoX's
  v-prediction on a DDPM schedule) is wrapped so that :meth:`Backbone.velocity` still returns
  the flow velocity ``eps - x0`` and an Euler step on :meth:`Backbone.sigma_grid` is exactly
  the model's own DDIM step;
* text conditioning is one tensor ``(B, L, D)`` per prompt batch, padded as the model's own
  pipeline pads it, so it can be stored with trajectories, batched for CFG and indexed. An adapter whose model
  needs more than token embeddings packs it into that tensor and documents the layout;
* :meth:`Backbone.guided_velocity` is the teacher's guidance: classifier-free guidance (two
  branches in one batched call) or, for guidance-distilled models, an embedded guidance scale.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from dcm import flow
from dcm.errors import DcmError
from dcm.guidance import VelocityFn, guided

if TYPE_CHECKING:
    from dcm.config import ModelParams


class BackboneError(DcmError, FileNotFoundError):
    """A model directory that is missing or incomplete."""


class TeacherMismatchError(DcmError, ValueError):
    """A param or a stage the teacher checkpoint cannot serve (e.g. a second CFG scale for one transformer)."""


def check_model_dir(path: str | Path, required: Sequence[str], kind: str, hint: str) -> Path:
    """Fail before loading anything when ``path`` lacks one of the ``required`` subfolders or files."""
    path = Path(path)
    if not path.is_dir():
        raise BackboneError(f"model.path {path} ({kind}) does not exist or is not a directory; {hint}")
    missing = [name for name in required if not (path / name).exists()]
    if missing:
        raise BackboneError(
            f"model.path {path} is not a complete {kind} diffusers directory: missing "
            f"{', '.join(str(path / m) for m in missing)}; expected {', '.join(required)}. {hint}"
        )
    return path


class Backbone(ABC):
    """Base class of the adapters. Subclasses set the class attributes and the model-specific methods;
    everything dcm knows about a model family is here, so adding one is a module and a line in
    ``dcm.models.BACKBONES``."""

    kind: ClassVar[str]
    #: diffusers class names of the transformer and of the stock pipeline (None: no stock pipeline runs it)
    transformer_class: ClassVar[str]
    pipeline_class: ClassVar[str | None] = None
    #: the stock pipeline holds two transformers and switches at a boundary (WanPipeline's ``transformer_2``
    #: and ``boundary_ratio``), so it runs both experts
    two_expert_pipeline: ClassVar[bool] = False
    #: text tokens per prompt when ``model.max_sequence_length`` is null: the model's own pipeline's
    default_max_sequence_length: ClassVar[int]
    #: the text tokens join the video tokens' self-attention (else the video cross-attends to them)
    joint_attention: ClassVar[bool] = False
    #: its sigmas are :func:`dcm.flow.sigma_grid`'s, as diffusers' flow-matching scheduler's; False: the
    #: model's own schedule (:meth:`sigma_grid`), which the stock flow-matching sigmas do not describe
    flow_matching: ClassVar[bool] = True
    #: what a local diffusers directory of this model must hold, and where to get one
    subfolders: ClassVar[tuple[str, ...]] = ()
    source_hint: ClassVar[str] = ""
    #: module paths (or parameter names) inside the transformer that depend on the timestep;
    #: the parameter-efficient detail expert trains copies of these
    timestep_layers: ClassVar[tuple[str, ...]]
    #: name of the transformer's list of blocks that the discriminator taps
    block_lists: ClassVar[tuple[str, ...]] = ("blocks",)
    #: "cfg" (two branches) or "embedded" (a guidance-distilled model takes the scale as input)
    guidance: ClassVar[str] = "cfg"

    transformer: nn.Module
    #: an image-to-video model's images by prompt (:meth:`use_images`), which :meth:`encode_prompts` packs
    prompt_images: dict[str, Any] | None = None

    @property
    def condition_channels(self) -> int:
        """Channels the transformer takes beside the noisy latent (an image-to-video model's image
        condition); 0 for text to video."""
        return 0

    def use_images(self, images: dict[str, Any], frames: int) -> None:
        """Give an image-to-video model the image of each prompt (uint8 ``(H, W, 3)`` at the video's size),
        for a video of ``frames`` frames: its conditioning then holds the image."""
        raise BackboneError(f"{self.kind}: this backbone takes no images")

    @classmethod
    def check(cls, path: str | Path) -> Path:
        """Fail fast, before loading any weights, when ``path`` is not a complete model directory."""
        return check_model_dir(path, cls.subfolders, cls.kind, cls.source_hint)

    @classmethod
    def expert_boundary(cls, path: str | Path) -> float | None:
        """The timestep at which the checkpoint in ``path`` switches from its ``transformer`` to its
        ``transformer_2`` (a two-expert teacher, read before loading any weight); None: one transformer."""
        return None

    @classmethod
    def takes_images(cls, path: str | Path) -> bool:
        """Whether the checkpoint in ``path`` is an image-to-video model (read before loading any weight)."""
        return False

    @classmethod
    def accepts_images(cls, path: str | Path) -> bool:
        """Whether the checkpoint in ``path`` can be conditioned on images (an image-to-video model, or one
        that does text and image to video alike)."""
        return cls.takes_images(path)

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, **options) -> Backbone:
        """Load every part from a local directory (``options``: the adapter's loader settings)."""

    @classmethod
    def loader_options(cls, model: ModelParams) -> dict[str, Any]:
        """The ``from_pretrained`` options the ``model`` params set (kept in the teacher's ``backbone.json``)."""
        return {"max_sequence_length": model.max_sequence_length} if model.max_sequence_length else {}

    @classmethod
    def text_tokens(cls, model: ModelParams) -> int:
        """Text tokens per prompt of the ``model`` params: ``max_sequence_length``, or the model's own."""
        return model.max_sequence_length or cls.default_max_sequence_length

    @classmethod
    def skeleton(cls, model: ModelParams, path: str | Path | None = None) -> Backbone:
        """The adapter with its transformer and VAE on the meta device, built from their ``config.json``
        in ``path`` (default: ``model.path``, checked): the model's structure, no weight read and no
        text stack loaded."""
        import diffusers
        from accelerate import init_empty_weights

        path = Path(path) if path is not None else cls.check(model.path)
        backbone = object.__new__(cls)  # no __init__: it would want the text encoders and tokenizers
        for part in ("transformer", "vae"):
            config = json.loads((path / part / "config.json").read_text())
            with init_empty_weights():
                setattr(backbone, part, getattr(diffusers, config["_class_name"]).from_config(config))
        return backbone

    # ---- text and video -------------------------------------------------------------------
    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text conditioning ``(B, L, D)`` for ``prompts`` (see the module docstring)."""

    @abstractmethod
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, 3, F, H, W)`` in [-1, 1] to scaled latents."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents to pixels ``(B, 3, F, H, W)`` in [-1, 1]."""

    @abstractmethod
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, T, H, W)`` of one video's latents."""

    # ---- the denoiser -----------------------------------------------------------------------
    def sigma_grid(self, steps: int, shift: float) -> torch.Tensor:
        """The ``steps + 1`` sigmas of the teacher's grid, index 0 (clean) to ``steps`` (noise)."""
        return flow.sigma_grid(steps, shift)

    def initial_latents(self, noise: torch.Tensor, sigma_max: float) -> torch.Tensor:
        """Latents at the noise end of the grid from unit Gaussian noise (sigma 1 for flow models)."""
        return noise

    @abstractmethod
    def velocity(self, transformer: nn.Module, latents: torch.Tensor, sigma: torch.Tensor,
                 text: torch.Tensor) -> torch.Tensor:
        """Call ``transformer`` (the teacher or a student) as a flow-matching velocity model."""

    def guided_velocity(self, transformer: nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None,
                        guidance_scale: float, guidance_scale_2: float | None = None) -> VelocityFn:
        """The guided teacher velocity ``fn(x, sigma)``; ``guidance_scale`` 1 is the plain model.
        ``guidance_scale_2`` is a two-expert teacher's scale below its switch (:meth:`expert_boundary`);
        a model with one transformer has none (the params refuse one)."""
        return guided(lambda x, s, c: self.velocity(transformer, x, s, c), cond, uncond, guidance_scale)

    def teacher_expert(self, low_noise: bool = False) -> nn.Module:
        """The teacher transformer a student of one phase starts from: the teacher's only one, or of a
        two-expert teacher (Wan2.2-A14B) ``transformer_2`` for the low-noise detail expert and
        ``transformer`` for every other student."""
        experts = getattr(self.transformer, "experts", None)  # a two-expert teacher: (high-noise, low-noise)
        return self.transformer if experts is None else experts[low_noise]

    # ---- what the detail expert and the discriminator need ------------------------------------
    def forward_passes(self, steps: int, guidance_scale: float) -> int:
        """Transformer calls (per video) of ``steps`` sampling steps: CFG runs two branches per step
        unless its scale is 1; embedded guidance runs one."""
        return steps * (2 if self.guidance == "cfg" and guidance_scale != 1.0 else 1)

    def feature_blocks(self, transformer: nn.Module | None = None) -> list[nn.Module]:
        """The transformer blocks whose outputs the discriminator reads, in order."""
        transformer = transformer or self.teacher_expert()
        return [block for name in self.block_lists for block in getattr(transformer, name)]

    def fsdp_blocks(self) -> tuple[str, ...]:
        """The FSDP units, one per transformer block: those of the transformer class's own
        ``_no_split_modules`` (diffusers') that its block lists hold, so not the patch embedding or text
        refiner it also names, nor a class this configuration does not build (accelerate rejects those)."""
        blocks = {type(block).__name__ for block in self.feature_blocks()}
        return tuple(name for name in type(self.teacher_expert())._no_split_modules if name in blocks)

    def feature_dim(self) -> int:
        cfg = self.transformer.config
        return cfg.num_attention_heads * cfg.attention_head_dim

    def token_grid(self, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        """(frames, height, width) of the token grid for latents ``(B, C, T, H, W)``."""
        _, _, t, h, w = latent_shape
        pt, ph, pw = self.patch_size()
        return t // pt, h // ph, w // pw

    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer.config.patch_size)

    # ---- persistence --------------------------------------------------------------------------
    def load_transformer(self, path: str | Path) -> nn.Module:
        """A transformer of this backbone's class from a ``save_pretrained`` directory (a student)."""
        return type(self.teacher_expert()).from_pretrained(path)

    def save_pretrained(self, path: str | Path, transformer: nn.Module | None = None) -> None:
        """Write every part in the diffusers layout (``transformer`` replaces the teacher's, e.g. a student)."""
        path = Path(path)
        for name in self.subfolders:
            part = transformer if name == "transformer" and transformer is not None else getattr(self, name)
            part.save_pretrained(path / name)

    def enable_gradient_checkpointing(self, transformer: nn.Module) -> None:
        if getattr(transformer, "_supports_gradient_checkpointing", False):
            transformer.enable_gradient_checkpointing()


def token_features(output) -> torch.Tensor:
    """The video tokens of a block's output (dual-stream blocks return ``(video, text)``)."""
    return output[0] if isinstance(output, tuple) else output

