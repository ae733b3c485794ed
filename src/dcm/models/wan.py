"""Wan2.1 and Wan2.2-A14B (``WanTransformer3DModel``) from a local diffusers directory.

Flow matching with velocity prediction on shifted sigmas, timestep ``1000 * sigma``, UMT5 text
embeddings with padding zeroed (as ``WanPipeline`` does), classifier-free guidance, and the
``AutoencoderKLWan`` latents normalised per channel by ``latents_mean`` / ``latents_std``.

A directory whose ``model_index.json`` names a ``transformer_2`` and a ``boundary_ratio`` (Wan2.2-A14B)
is a two-expert teacher: :class:`TwoExpertTransformer` runs ``transformer`` at timesteps
``t >= boundary_ratio * num_train_timesteps`` and ``transformer_2`` below, and its CFG uses
``guidance_scale`` above the switch and ``guidance_scale_2`` below, as ``WanPipeline`` does per step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dcm import flow
from dcm.guidance import VelocityFn, guided
from dcm.models.base import Backbone, BackboneError, check_model_dir

WAN_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")
WAN_TIMESTEP_LAYERS = ("condition_embedder.time_embedder", "condition_embedder.time_proj", "proj_out",
                       "scale_shift_table")


def wan_velocity(transformer: nn.Module, latents: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor,
                 token_patch: tuple[int, int, int] | None = None, image: torch.Tensor | None = None) -> torch.Tensor:
    """A Wan transformer as a velocity model: timestep ``1000 * sigma`` per sample, or with ``token_patch``
    (the patch size of a model whose pipeline expands timesteps, Wan2.2-TI2V-5B) per token, as
    ``WanPipeline`` passes it."""
    t = flow.timestep(torch.as_tensor(sigma, dtype=torch.float32, device=latents.device).expand(latents.shape[0]))
    if token_patch is not None:
        _, _, frames, height, width = latents.shape
        pt, ph, pw = token_patch
        t = t[:, None].expand(-1, (frames // pt) * (height // ph) * (width // pw))
    if image is not None:  # Wan2.1-I2V's CLIP image tokens
        return transformer(latents, t, text.to(latents.dtype), image.to(latents.dtype), return_dict=False)[0]
    return transformer(latents, t, text.to(latents.dtype), return_dict=False)[0]


def pack_rows(values: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, ...)`` values flattened into zero-padded rows ``(B, rows, width)``, to ride in a conditioning tensor."""
    flat = values.flatten(1)
    rows = -(-flat.shape[1] // width)
    return torch.nn.functional.pad(flat, (0, rows * width - flat.shape[1])).view(len(values), rows, width)


def unpack_rows(rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`pack_rows` for values of ``shape`` per sample."""
    numel = 1
    for size in shape:
        numel *= size
    return rows.flatten(1)[:, :numel].view(len(rows), *shape)


def expands_timesteps(path: Path) -> bool:
    """Whether the checkpoint's pipeline gives every token its own timestep (``expand_timesteps`` in its
    ``model_index.json``: Wan2.2-TI2V-5B)."""
    index_file = path / "model_index.json"
    return index_file.exists() and bool(json.loads(index_file.read_text()).get("expand_timesteps"))


def encode_t5(tokenizer, text_encoder: nn.Module, prompts: list[str], max_length: int) -> torch.Tensor:
    """T5-family embeddings padded to ``max_length`` with the padding positions zeroed."""
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    mask = tokens.attention_mask.to(device)
    hidden = text_encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
    return hidden * mask[..., None].to(hidden.dtype)


def expert_boundary(path: Path) -> float | None:
    """The timestep at which the checkpoint in ``path`` switches from ``transformer`` to ``transformer_2``
    (``boundary_ratio`` times the scheduler's ``num_train_timesteps``, as WanPipeline computes it), or
    None for one transformer (no ``model_index.json``, or one that names no ``transformer_2``)."""
    index_file = path / "model_index.json"
    if not index_file.exists():
        return None
    index = json.loads(index_file.read_text())
    names_second = any(index.get("transformer_2") or [])
    ratio = index.get("boundary_ratio")
    if not names_second and ratio is None:
        return None
    if not names_second or ratio is None:
        raise BackboneError(f"{index_file} names {'transformer_2' if names_second else f'boundary_ratio {ratio}'} "
                            f"without {'boundary_ratio' if names_second else 'transformer_2'}: a two-expert Wan2.2 "
                            "checkpoint needs both (WanPipeline switches transformers at boundary_ratio)")
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    train_timesteps = json.loads(scheduler_file.read_text()).get("num_train_timesteps", 1000) \
        if scheduler_file.exists() else 1000
    return float(ratio) * train_timesteps


class TwoExpertTransformer(nn.Module):
    """Wan2.2-A14B's two transformers as one module: ``transformer`` (the high-noise expert) for the
    samples at ``t >= boundary_timestep``, ``transformer_2`` (low-noise) below, the rule WanPipeline
    applies per step. dcm also calls a teacher with a timestep per sample: a batch that straddles the
    boundary is split, each part run by its expert, and the outputs put back in the batch's order."""

    def __init__(self, transformer: nn.Module, transformer_2: nn.Module, boundary_timestep: float):
        super().__init__()
        self.transformer, self.transformer_2, self.boundary_timestep = transformer, transformer_2, boundary_timestep

    @property
    def config(self):
        """The high-noise expert's config (Wan2.2-A14B's two share one architecture)."""
        return self.transformer.config

    @property
    def experts(self) -> tuple[nn.Module, nn.Module]:
        """(high-noise, low-noise): the experts the students of each phase start from."""
        return self.transformer, self.transformer_2

    def high_noise(self, timestep: torch.Tensor) -> torch.Tensor:
        """True where ``transformer`` runs."""
        return torch.as_tensor(timestep) >= self.boundary_timestep

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor | None = None, return_dict: bool = True,
                attention_kwargs: dict | None = None):
        batch = hidden_states.shape[0]
        timestep = torch.as_tensor(timestep, device=hidden_states.device).expand(batch)
        high = self.high_noise(timestep)
        parts, rows = [], []
        for expert, mask in ((self.transformer, high), (self.transformer_2, ~high)):
            if mask.all():  # the whole batch on one side: the expert sees it unchanged, as in WanPipeline
                return expert(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                              return_dict=return_dict, attention_kwargs=attention_kwargs)
            if not mask.any():
                continue
            index = mask.nonzero().squeeze(1)
            image = None if encoder_hidden_states_image is None else encoder_hidden_states_image[index]
            parts.append(expert(hidden_states[index], timestep[index], encoder_hidden_states[index], image,
                                return_dict=False, attention_kwargs=attention_kwargs)[0])
            rows.append(index)
        out = torch.cat(parts)[torch.cat(rows).argsort()]
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=out)
        return (out,)


class WanBackbone(Backbone):
    kind = "wan"
    transformer_class = "WanTransformer3DModel"
    pipeline_class = "WanPipeline"
    two_expert_pipeline = True
    default_max_sequence_length = 512
    subfolders = WAN_SUBFOLDERS
    source_hint = ("Point model.path at a local copy of e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers "
                   "(dcm never downloads weights).")
    timestep_layers = WAN_TIMESTEP_LAYERS
    block_lists = ("blocks",)
    expand_timesteps = False
    image_encoder = image_processor = None

    def __init__(self, transformer, vae, text_encoder, tokenizer, max_sequence_length: int | None = None,
                 expand_timesteps: bool = False, image_encoder=None, image_processor=None):
        self.transformer, self.vae, self.text_encoder, self.tokenizer = transformer, vae, text_encoder, tokenizer
        self.max_sequence_length = max_sequence_length or self.default_max_sequence_length
        self.expand_timesteps = expand_timesteps  # a timestep per token (Wan2.2-TI2V-5B's pipeline)
        self.image_encoder, self.image_processor = image_encoder, image_processor  # Wan2.1-I2V's CLIP

    @classmethod
    def check(cls, path: str | Path) -> Path:
        """As :meth:`Backbone.check`, and every component its ``model_index.json`` names must be there (a
        two-expert checkpoint's ``transformer_2``, an I2V checkpoint's ``image_encoder``)."""
        path = super().check(path)
        if expert_boundary(path) is not None:
            check_model_dir(path, (*cls.subfolders, "transformer_2"), "two-expert Wan2.2", cls.source_hint)
        index_file = path / "model_index.json"
        if index_file.exists():
            index = json.loads(index_file.read_text())
            named = [k for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[0] is not None
                     and k not in (*cls.subfolders, "scheduler")]
            check_model_dir(path, named, f"{index.get('_class_name', 'Wan')} (as its model_index.json names)",
                            cls.source_hint)
        return path

    @classmethod
    def expert_boundary(cls, path: str | Path) -> float | None:
        return expert_boundary(Path(path))

    @classmethod
    def takes_images(cls, path: str | Path) -> bool:
        """An image-to-video checkpoint: its transformer takes more input channels than it puts out (the
        first-frame mask and the image latent)."""
        config = json.loads((Path(path) / "transformer" / "config.json").read_text())
        return config["in_channels"] > config["out_channels"]

    @classmethod
    def accepts_images(cls, path: str | Path) -> bool:
        """An I2V checkpoint, or TI2V-5B (text or image to video: the image becomes the first latent frame)."""
        return cls.takes_images(path) or expands_timesteps(Path(path))

    @classmethod
    def from_pretrained(cls, path: str | Path, max_sequence_length: int | None = None, **_) -> WanBackbone:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        path = cls.check(path)
        transformer = WanTransformer3DModel.from_pretrained(path / "transformer")
        boundary = expert_boundary(path)
        if boundary is not None:
            transformer = TwoExpertTransformer(transformer, WanTransformer3DModel.from_pretrained(path / "transformer_2"),
                                               boundary)
        image_encoder = image_processor = None
        if (path / "image_encoder").exists():  # Wan2.1-I2V: CLIP image tokens in every cross-attention
            from transformers import CLIPImageProcessor, CLIPVisionModel

            image_encoder = CLIPVisionModel.from_pretrained(path / "image_encoder").eval().requires_grad_(False)
            image_processor = CLIPImageProcessor.from_pretrained(path / "image_processor")
        return cls(
            transformer,
            AutoencoderKLWan.from_pretrained(path / "vae").eval().requires_grad_(False),
            UMT5EncoderModel.from_pretrained(path / "text_encoder").eval().requires_grad_(False),
            AutoTokenizer.from_pretrained(path / "tokenizer"),
            max_sequence_length,
            expands_timesteps(path),
            image_encoder,
            image_processor,
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """T5 embeddings; once an image-to-video model has its images (:meth:`use_images`), its conditioning
        also packs each prompt's image (:meth:`condition_on_images`); the empty prompt stays text only
        (CFG's unconditional branch takes the image from the conditional one)."""
        text = encode_t5(self.tokenizer, self.text_encoder, prompts, self.max_sequence_length)
        if self.prompt_images is None or prompts == [""]:
            return text
        missing = [p for p in prompts if p not in (self.prompt_images or {})]
        if missing:
            raise BackboneError(f"no image for the prompt {missing[0]!r}: an image-to-video model needs one per "
                                "prompt (a .csv or .jsonl prompt file with text and image columns)")
        return self.condition_on_images(text, [self.prompt_images[p] for p in prompts], self.frames)

    def use_images(self, images: dict[str, np.ndarray], frames: int) -> None:
        self.prompt_images, self.frames = images, frames

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(cfg.latents_std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode().float()
        mean, std = self._stats(z)
        return (z - mean) / std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents.float())
        z = latents.float() * std + mean
        return self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0].float().clamp(-1, 1)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        cfg = self.vae.config
        return (cfg.z_dim, (frames - 1) // cfg.scale_factor_temporal + 1,
                height // cfg.scale_factor_spatial, width // cfg.scale_factor_spatial)

    # ---- image to video (Wan2.1-I2V, Wan2.2-I2V-A14B) --------------------------------------------
    @property
    def condition_channels(self) -> int:
        """Channels the transformer takes beside the noisy latent (the first-frame mask and the image
        latent of an image-to-video model); 0 for text to video."""
        cfg = self.teacher_expert().config
        return cfg.in_channels - cfg.out_channels

    @torch.no_grad()
    def condition_on_images(self, text: torch.Tensor, images: list[np.ndarray], frames: int) -> torch.Tensor:
        """The conditioning of an image-to-video model: ``text`` ``(B, L, D)`` followed by rows holding, as
        WanImageToVideoPipeline builds them, the first-frame mask and the VAE latent of each image (uint8
        ``(H, W, 3)``, the video's size) followed by ``frames - 1`` black frames, and (Wan2.1-I2V) the
        penultimate CLIP hidden states of the image."""
        if not self.condition_channels and not self.expand_timesteps:
            raise BackboneError("condition_on_images: this checkpoint takes no image condition (its transformer's "
                                "in_channels equal its out_channels and its pipeline does not expand timesteps)")
        pixels = torch.stack([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1) for i in images]).float()
        pixels = pixels.to(text.device) / 127.5 - 1.0
        if self.expand_timesteps:  # TI2V-5B: the image's own latent becomes the first latent frame
            latent = self.encode_video(pixels[:, :, None])
            return torch.cat([text, pack_rows(latent.to(text.dtype), text.shape[-1])], dim=1)
        b, _, height, width = pixels.shape
        video = torch.cat([pixels[:, :, None], pixels.new_zeros(b, 3, frames - 1, height, width)], dim=2)
        latent = self.encode_video(video)
        _, _, _, h, w = latent.shape
        t_scale = self.vae.config.scale_factor_temporal
        mask = torch.zeros(b, 1, frames, h, w, device=latent.device)
        mask[:, :, 0] = 1
        mask = torch.cat([mask[:, :, :1].repeat_interleave(t_scale, dim=2), mask[:, :, 1:]], dim=2)
        mask = mask.view(b, -1, t_scale, h, w).transpose(1, 2)  # (B, 4, T, h, w): the first latent frame is the image
        parts = [text, pack_rows(torch.cat([mask, latent], dim=1).to(text.dtype), text.shape[-1])]
        if self.image_encoder is not None:
            inputs = self.image_processor(images=list(images), return_tensors="pt").to(text.device)
            clip = self.image_encoder(**inputs, output_hidden_states=True).hidden_states[-2]
            parts.append(torch.nn.functional.pad(clip, (0, text.shape[-1] - clip.shape[-1])).to(text.dtype))
        return torch.cat(parts, dim=1)

    def _split(self, conditioning: torch.Tensor, latents: torch.Tensor):
        """(text, image condition, CLIP tokens) of a conditioning tensor (see :meth:`condition_on_images`)."""
        text_tokens, channels = self.max_sequence_length, self.condition_channels
        if conditioning.shape[1] == text_tokens or not (channels or self.expand_timesteps):
            return conditioning[:, :text_tokens], None, None
        if self.expand_timesteps:  # TI2V-5B: the first latent frame's latent
            shape = (latents.shape[1], 1, *latents.shape[3:])
            rows = pack_rows(torch.zeros(1, *shape), conditioning.shape[-1]).shape[1]
            return conditioning[:, :text_tokens], unpack_rows(conditioning[:, text_tokens:text_tokens + rows], shape), None
        shape = (channels, *latents.shape[2:])
        rows = pack_rows(torch.zeros(1, *shape), conditioning.shape[-1]).shape[1]
        condition = unpack_rows(conditioning[:, text_tokens:text_tokens + rows], shape)
        clip = conditioning[:, text_tokens + rows:]
        image_dim = self.teacher_expert().config.image_dim
        return conditioning[:, :text_tokens], condition, (clip[..., :image_dim] if clip.shape[1] else None)

    def velocity(self, transformer, latents, sigma, text):
        text, condition, clip = self._split(text, latents)
        if condition is not None and self.expand_timesteps:
            return self._first_frame_velocity(transformer, latents, sigma, text, condition.to(latents.dtype))
        if condition is not None:
            latents = torch.cat([latents, condition.to(latents.dtype)], dim=1)
        return wan_velocity(transformer, latents, sigma, text, self.patch_size() if self.expand_timesteps else None,
                            clip)

    def _first_frame_velocity(self, transformer, latents, sigma, text, first):
        """TI2V-5B image to video, as WanImageToVideoPipeline runs it: the first latent frame is the image's
        latent at timestep 0, every other token at ``1000 * sigma``. The first frame's velocity is the one
        that carries it onto the image's latent at sigma 0 (``(x - image) / sigma``), so an Euler solve ends
        on the image there, where the stock pipeline writes the image in after its loop; the transformer
        never sees that frame of ``latents``."""
        x = torch.cat([first, latents[:, :, 1:]], dim=2)
        _, _, frames, height, width = latents.shape
        pt, ph, pw = self.patch_size()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=latents.device).expand(latents.shape[0])
        per_frame = flow.timestep(sigma)[:, None].expand(-1, frames // pt).clone()
        per_frame[:, 0] = 0.0
        t = per_frame[:, :, None].expand(-1, -1, (height // ph) * (width // pw)).flatten(1)
        v = transformer(x, t, text.to(latents.dtype), return_dict=False)[0]
        image_v = (latents[:, :, :1] - first) / sigma.view(-1, 1, 1, 1, 1).to(latents.dtype)
        return torch.cat([image_v, v[:, :, 1:]], dim=2)

    def guided_velocity(self, transformer: nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None,
                        guidance_scale: float, guidance_scale_2: float | None = None) -> VelocityFn:
        """A two-expert teacher guides with ``guidance_scale`` where ``transformer`` runs and with
        ``guidance_scale_2`` (None: the same) where ``transformer_2`` does, per sample. An image-to-video
        model's unconditional branch keeps the image (the text alone is dropped), as the stock pipeline."""
        if uncond is not None and uncond.shape[1] < cond.shape[1]:
            uncond = torch.cat([uncond, cond[:, uncond.shape[1]:]], dim=1)
        if not isinstance(transformer, TwoExpertTransformer) or guidance_scale_2 in (None, guidance_scale):
            return super().guided_velocity(transformer, cond, uncond, guidance_scale)

        def scale(sigma: torch.Tensor) -> float | torch.Tensor:
            high = transformer.high_noise(flow.timestep(sigma.float()))
            if not sigma.ndim:
                return guidance_scale if bool(high) else guidance_scale_2
            return torch.where(high, guidance_scale, guidance_scale_2).view(-1, 1, 1, 1, 1)

        return guided(lambda x, s, c: self.velocity(transformer, x, s, c), cond, uncond, scale)
