"""CogVideoX (``CogVideoXTransformer3DModel``) from a local diffusers directory, in flow coordinates.

CogVideoX is a v-prediction model on a DDPM schedule (``CogVideoXDDIMScheduler``). With
``a = sqrt(alphas_cumprod[t])`` and ``b = sqrt(1 - alphas_cumprod[t])`` its noisy latent is
``x_t = a * x0 + b * eps`` and it predicts ``v = a * eps - b * x0``. Dividing by ``a + b`` gives dcm's
flow coordinates ``x = (1 - sigma) * x0 + sigma * eps`` with ``sigma = b / (a + b)``; since
``a**2 + b**2 = 1`` the map is invertible for every sigma and the flow velocity is
``eps - x0 = (b - a) * x_t + (a + b) * v``. In these coordinates one Euler step between two sigmas
is exactly a deterministic DDIM step (eta 0) between the matching timesteps.

The text conditioning is the T5 output for all ``max_sequence_length`` positions as the pipeline
computes it: no attention mask and the padding positions *not* zeroed, because CogVideoX attends to
every position and was trained on those padding embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from dcm.models.base import Backbone

if TYPE_CHECKING:
    from dcm.config import ModelParams

COGVIDEOX_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
#: the I2V pipeline's ``ofs`` input (CogVideoX 1.5 checkpoints with an ``ofs_embedding``)
OFS = 2.0


class CogVideoXBackbone(Backbone):
    kind = "cogvideox"
    transformer_class = "CogVideoXTransformer3DModel"
    pipeline_class = "CogVideoXPipeline"
    # CogVideoX's sin-cos position table covers exactly ``max_text_seq_length`` text tokens (226)
    default_max_sequence_length = 226
    joint_attention = True
    flow_matching = False  # its own DDIM timesteps (see the module docstring)
    subfolders = COGVIDEOX_SUBFOLDERS
    source_hint = ("Point model.path at a local copy of e.g. THUDM/CogVideoX-2b "
                   "(dcm never downloads weights).")
    timestep_layers = ("time_embedding", "norm_out", "proj_out")
    block_lists = ("transformer_blocks",)

    def __init__(self, transformer, vae, text_encoder, tokenizer, scheduler, max_sequence_length: int | None = None):
        self.transformer, self.vae, self.text_encoder, self.tokenizer = transformer, vae, text_encoder, tokenizer
        self.scheduler = scheduler
        self.max_sequence_length = max_sequence_length or transformer.config.max_text_seq_length
        self.timestep_layers = self.copied_layers(transformer)
        ac = scheduler.alphas_cumprod.double()
        #: flow sigma of every training timestep, increasing; float32 so that grid sigmas match it exactly
        self.train_sigmas = ((1 - ac).sqrt() / (ac.sqrt() + (1 - ac).sqrt())).float()

    @classmethod
    def copied_layers(cls, transformer: nn.Module) -> tuple[str, ...]:
        """The timestep layers, with CogVideoX 1.5's ``ofs`` embedding where the checkpoint has one."""
        return (*cls.timestep_layers, "ofs_embedding") if transformer.ofs_embedding is not None else cls.timestep_layers

    @classmethod
    def skeleton(cls, model: ModelParams, path: str | Path | None = None) -> CogVideoXBackbone:
        backbone = super().skeleton(model, path)
        backbone.timestep_layers = cls.copied_layers(backbone.transformer)
        return backbone

    @classmethod
    def from_pretrained(cls, path: str | Path, max_sequence_length: int | None = None, **_) -> CogVideoXBackbone:
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
        from transformers import AutoTokenizer, T5EncoderModel

        path = cls.check(path)
        return cls(
            CogVideoXTransformer3DModel.from_pretrained(path / "transformer"),
            AutoencoderKLCogVideoX.from_pretrained(path / "vae").eval().requires_grad_(False),
            T5EncoderModel.from_pretrained(path / "text_encoder").eval().requires_grad_(False),
            AutoTokenizer.from_pretrained(path / "tokenizer"),
            CogVideoXDDIMScheduler.from_pretrained(path / "scheduler"),
            max_sequence_length,
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(next(self.text_encoder.parameters()).device))[0]

    # ---- video ----------------------------------------------------------------------------------
    def _padding(self, latent_frames: int) -> int:
        """Leading latent frames that make the count a multiple of ``patch_size_t`` (CogVideoX 1.5)."""
        return -latent_frames % (self.transformer.config.patch_size_t or 1)

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled latents; with ``patch_size_t`` the first frame is repeated in front, as CogVideoX 1.5
        fine-tuning does, to match :meth:`latent_shape`."""
        z = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode().float() * self.vae.config.scaling_factor
        return torch.cat([z[:, :, :1].expand(-1, -1, self._padding(z.shape[2]), -1, -1), z], dim=2)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        # the VAE decodes an odd number of latent frames to (T - 1) * 4 + 1 pixel frames; an even count
        # carries CogVideoX 1.5's leading padding frame, which the pipeline drops before decoding
        z = latents[:, :, 1 - latents.shape[2] % 2:].float() / self.vae.config.scaling_factor
        return self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0].float().clamp(-1, 1)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        cfg = self.vae.config
        ratio, spatial = cfg.temporal_compression_ratio, 2 ** (len(cfg.block_out_channels) - 1)
        if (frames - 1) % (2 * ratio):
            raise ValueError(f"CogVideoX's VAE decodes {2 * ratio}k + 1 frames (e.g. 49 or 81), not {frames}")
        latent_frames = (frames - 1) // ratio + 1
        return cfg.latent_channels, latent_frames + self._padding(latent_frames), height // spatial, width // spatial

    # ---- the denoiser -----------------------------------------------------------------------------
    def sigma_grid(self, steps: int, shift: float) -> torch.Tensor:
        """Clean (sigma 0, the DDIM step's final ``alpha = 1``) then the flow sigmas of the scheduler's own
        ``steps``-step timesteps (its ``timestep_spacing``), least to most noisy. ``shift`` is ignored: the
        schedule is the checkpoint's. Euler steps on this grid are DDIM steps between consecutive timesteps,
        which is the stock ``step`` whenever ``steps`` divides ``num_train_timesteps``."""
        self.scheduler.set_timesteps(steps)
        return torch.cat([torch.zeros(1), self.train_sigmas[self.scheduler.timesteps.cpu().flip(0)]])

    def initial_latents(self, noise: torch.Tensor, sigma_max: float) -> torch.Tensor:
        """DDIM starts from ``x_T = noise``, i.e. ``noise / (a + b)`` (``noise`` itself at zero terminal SNR)."""
        return noise * ((1 - sigma_max) ** 2 + sigma_max ** 2) ** 0.5

    def timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep whose flow sigma is ``sigma``: exact integers on the grid, linear between."""
        table = self.train_sigmas.to(sigma.device, torch.float64)
        s = sigma.to(torch.float64)
        lo = (torch.searchsorted(table, s, right=True) - 1).clamp(0, len(table) - 2)
        return lo + ((s - table[lo]) / (table[lo + 1] - table[lo])).clamp(0, 1)

    def rotary_embedding(self, frames: int, height: int, width: int, device: torch.device):
        """``CogVideoXPipeline._prepare_rotary_positional_embeddings`` for latents of this size."""
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        cfg = self.transformer.config
        p, p_t = cfg.patch_size, cfg.patch_size_t
        grid, base = (height // p, width // p), (cfg.sample_height // p, cfg.sample_width // p)
        if p_t is None:
            crops = get_resize_crop_region_for_grid(grid, base[1], base[0])
            return get_3d_rotary_pos_embed(cfg.attention_head_dim, crops, grid, frames, device=device)
        return get_3d_rotary_pos_embed(cfg.attention_head_dim, None, grid, (frames + p_t - 1) // p_t,
                                       grid_type="slice", max_size=base, device=device)

    def velocity(self, transformer: nn.Module, latents: torch.Tensor, sigma: torch.Tensor,
                 text: torch.Tensor) -> torch.Tensor:
        """Flow velocity from the v-prediction at the matching timestep (``transformer`` may be a student
        or an expert wrapper, so the configuration is read from the teacher's)."""
        b, _, t, h, w = latents.shape
        s = torch.as_tensor(sigma, device=latents.device).reshape(-1).expand(b).double()
        norm = torch.rsqrt((1 - s) ** 2 + s ** 2)  # a + b
        alpha, beta = ((c * norm).float().view(b, 1, 1, 1, 1) for c in (1 - s, s))
        x_t = latents.float() * (alpha + beta)
        cfg = self.transformer.config
        v = transformer(
            hidden_states=x_t.to(latents.dtype).permute(0, 2, 1, 3, 4),
            encoder_hidden_states=text.to(latents.dtype),
            timestep=self.timesteps(s).float(),
            ofs=latents.new_full((1,), OFS) if self.transformer.ofs_embedding is not None else None,
            image_rotary_emb=self.rotary_embedding(t, h, w, latents.device)
            if cfg.use_rotary_positional_embeddings else None,
            return_dict=False,
        )[0].permute(0, 2, 1, 3, 4).float()
        return ((beta - alpha) * x_t + (alpha + beta) * v).to(latents.dtype)

    # ---- the detail expert and the discriminator ----------------------------------------------------
    def patch_size(self) -> tuple[int, int, int]:
        cfg = self.transformer.config
        return cfg.patch_size_t or 1, cfg.patch_size, cfg.patch_size
