"""Wan2.1 (``WanTransformer3DModel``) from a local diffusers directory.

Flow matching with velocity prediction on shifted sigmas, timestep ``1000 * sigma``, UMT5 text
embeddings with padding zeroed (as ``WanPipeline`` does), classifier-free guidance, and the
``AutoencoderKLWan`` latents normalised per channel by ``latents_mean`` / ``latents_std``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dcm import flow
from dcm.models.base import Backbone

WAN_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")
WAN_TIMESTEP_LAYERS = ("condition_embedder.time_embedder", "condition_embedder.time_proj", "proj_out",
                       "scale_shift_table")


def wan_velocity(transformer: nn.Module, latents: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """A Wan transformer as a velocity model: timestep ``1000 * sigma`` per sample."""
    t = flow.timestep(torch.as_tensor(sigma, dtype=torch.float32, device=latents.device).expand(latents.shape[0]))
    return transformer(latents, t, text.to(latents.dtype), return_dict=False)[0]


def encode_t5(tokenizer, text_encoder: nn.Module, prompts: list[str], max_length: int) -> torch.Tensor:
    """T5-family embeddings padded to ``max_length`` with the padding positions zeroed."""
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    mask = tokens.attention_mask.to(device)
    hidden = text_encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
    return hidden * mask[..., None].to(hidden.dtype)


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

    def __init__(self, transformer, vae, text_encoder, tokenizer, max_sequence_length: int | None = None):
        self.transformer, self.vae, self.text_encoder, self.tokenizer = transformer, vae, text_encoder, tokenizer
        self.max_sequence_length = max_sequence_length or self.default_max_sequence_length

    @classmethod
    def from_pretrained(cls, path: str | Path, max_sequence_length: int | None = None, **_) -> WanBackbone:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        path = cls.check(path)
        return cls(
            WanTransformer3DModel.from_pretrained(path / "transformer"),
            AutoencoderKLWan.from_pretrained(path / "vae").eval().requires_grad_(False),
            UMT5EncoderModel.from_pretrained(path / "text_encoder").eval().requires_grad_(False),
            AutoTokenizer.from_pretrained(path / "tokenizer"),
            max_sequence_length,
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return encode_t5(self.tokenizer, self.text_encoder, prompts, self.max_sequence_length)

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

    def velocity(self, transformer, latents, sigma, text):
        return wan_velocity(transformer, latents, sigma, text)
