"""HunyuanVideo (``HunyuanVideoTransformer3DModel``) from a local diffusers directory.

Flow matching with velocity prediction, timestep ``1000 * sigma`` (``FlowMatchEulerDiscreteScheduler``'s
timesteps, as ``HunyuanVideoPipeline`` passes them). The released model is guidance-distilled: the
guidance scale is an input (``guidance = 1000 * scale``), so the teacher's guided velocity is one call
and there is no unconditional branch; teacher and students all run at ``model.embedded_guidance_scale``.

Conditioning packing. The transformer needs the Llama token embeddings, their attention mask and the
CLIP pooled projection; dcm carries one tensor ``(B, L + 1, D)``:

* rows ``0 .. L-1``: the Llama embeddings (``hidden_states[-3]`` of the pipeline's prompt template,
  the template tokens cropped off), padding rows zeroed, so the mask is "row not all zero";
* row ``L``: the CLIP ``pooler_output`` (``P = pooled_projection_dim`` values) zero-padded to ``D``
  (``P <= D``: 768 <= 4096 for the release).

:func:`pack_conditioning` and :func:`unpack_conditioning` convert between the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dcm import flow
from dcm.guidance import VelocityFn
from dcm.models.base import Backbone

if TYPE_CHECKING:
    from dcm.config import ModelParams

HUNYUAN_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
#: the pipeline's ``num_hidden_layers_to_skip`` (Llama ``hidden_states[-3]``) and CLIP's prompt length
SKIP_LAYERS, CLIP_LENGTH = 2, 77


def pack_conditioning(tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """``(B, L, D)`` embeddings (padding zeroed) and ``(B, P)`` pooled projection -> ``(B, L + 1, D)``."""
    dim = tokens.shape[-1]
    if pooled.shape[-1] > dim:
        raise ValueError(f"pooled projection ({pooled.shape[-1]}) is wider than the text embeddings ({dim})")
    return torch.cat([tokens, F.pad(pooled, (0, dim - pooled.shape[-1])).to(tokens.dtype)[:, None]], dim=1)


def unpack_conditioning(text: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_conditioning`: embeddings, attention mask (bool) and pooled projection."""
    tokens = text[:, :-1]
    return tokens, tokens.ne(0).any(dim=-1), text[:, -1, :pooled_dim]


class HunyuanVideoBackbone(Backbone):
    kind = "hunyuanvideo"
    transformer_class = "HunyuanVideoTransformer3DModel"
    pipeline_class = "HunyuanVideoPipeline"
    default_max_sequence_length = 256
    joint_attention = True
    subfolders = HUNYUAN_SUBFOLDERS
    source_hint = ("Point model.path at a local copy of e.g. hunyuanvideo-community/HunyuanVideo "
                   "(dcm never downloads weights).")
    # the refiner's own timestep embedding conditions the text tokens on t, so it is copied as well
    timestep_layers = ("time_text_embed", "context_embedder.time_text_embed", "norm_out", "proj_out")
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    guidance = "embedded"

    def __init__(self, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 max_sequence_length: int | None = None, embedded_guidance_scale: float = 6.0,
                 prompt_template: dict | None = None):
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

        self.transformer, self.vae = transformer, vae
        self.text_encoder, self.tokenizer, self.text_encoder_2, self.tokenizer_2 = (
            text_encoder, tokenizer, text_encoder_2, tokenizer_2)
        self.max_sequence_length = max_sequence_length or self.default_max_sequence_length
        self.embedded_guidance_scale = embedded_guidance_scale
        self.prompt_template = prompt_template or DEFAULT_PROMPT_TEMPLATE
        #: template tokens cut off the front; a template without ``crop_start`` is cut after its prefix
        crop = self.prompt_template.get("crop_start")
        if crop is None:
            crop = len(tokenizer(self.prompt_template["template"].split("{}")[0]).input_ids)
        self.crop_start = crop

    @classmethod
    def loader_options(cls, model: ModelParams) -> dict[str, Any]:
        """The embedded guidance scale too: teacher and students run at ``model.embedded_guidance_scale``."""
        return {**super().loader_options(model), "embedded_guidance_scale": model.embedded_guidance_scale}

    @classmethod
    def from_pretrained(cls, path: str | Path, max_sequence_length: int | None = None,
                        embedded_guidance_scale: float = 6.0, prompt_template: dict | None = None,
                        **_) -> HunyuanVideoBackbone:
        from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
        from transformers import AutoTokenizer, CLIPTextModel, LlamaModel

        path = cls.check(path)
        return cls(
            HunyuanVideoTransformer3DModel.from_pretrained(path / "transformer"),
            AutoencoderKLHunyuanVideo.from_pretrained(path / "vae").eval().requires_grad_(False),
            LlamaModel.from_pretrained(path / "text_encoder").eval().requires_grad_(False),
            AutoTokenizer.from_pretrained(path / "tokenizer"),
            CLIPTextModel.from_pretrained(path / "text_encoder_2").eval().requires_grad_(False),
            AutoTokenizer.from_pretrained(path / "tokenizer_2"),
            max_sequence_length, embedded_guidance_scale, prompt_template,
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Llama embeddings and CLIP pooled projection as ``HunyuanVideoPipeline.encode_prompt``, packed."""
        crop = self.crop_start
        tokens = self.tokenizer([self.prompt_template["template"].format(p) for p in prompts], padding="max_length",
                                max_length=self.max_sequence_length + crop, truncation=True, return_tensors="pt",
                                return_attention_mask=True)
        device = next(self.text_encoder.parameters()).device
        mask = tokens.attention_mask.to(device)
        hidden = self.text_encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask,
                                   output_hidden_states=True).hidden_states[-(SKIP_LAYERS + 1)]
        hidden, mask = hidden[:, crop:], mask[:, crop:]
        clip = self.tokenizer_2(prompts, padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                                return_tensors="pt")
        pooled = self.text_encoder_2(clip.input_ids.to(next(self.text_encoder_2.parameters()).device)).pooler_output
        return pack_conditioning(hidden * mask[..., None].to(hidden.dtype), pooled.to(hidden.device))

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode().float()
        return z * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float() / self.vae.config.scaling_factor
        return self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0].float().clamp(-1, 1)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        cfg = self.vae.config
        return (cfg.latent_channels, (frames - 1) // cfg.temporal_compression_ratio + 1,
                height // cfg.spatial_compression_ratio, width // cfg.spatial_compression_ratio)

    def velocity(self, transformer: nn.Module, latents: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor,
                 guidance_scale: float | None = None) -> torch.Tensor:
        """One call at timestep ``1000 * sigma`` with the embedded guidance ``guidance_scale``
        (default :attr:`embedded_guidance_scale`); ``transformer`` may be a student or an expert wrapper."""
        b = latents.shape[0]
        tokens, mask, pooled = unpack_conditioning(text, self.transformer.config.pooled_projection_dim)
        scale = self.embedded_guidance_scale if guidance_scale is None else guidance_scale
        return transformer(
            hidden_states=latents,
            timestep=flow.timestep(torch.as_tensor(sigma, dtype=torch.float32, device=latents.device).expand(b)),
            encoder_hidden_states=tokens.to(latents.dtype),
            encoder_attention_mask=mask.to(latents.dtype),
            pooled_projections=pooled.to(latents.dtype),
            guidance=torch.full((b,), float(scale), dtype=latents.dtype, device=latents.device) * 1000.0,
            return_dict=False,
        )[0]

    def guided_velocity(self, transformer: nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None,
                        guidance_scale: float, guidance_scale_2: float | None = None) -> VelocityFn:
        """Embedded guidance: one call per step with :attr:`embedded_guidance_scale` as input, for the
        teacher and the students alike (they learn and sample the same guided model). The CFG scale
        (``trajectories.guidance_scale``) and ``uncond`` do not apply to a guidance-distilled model."""
        return lambda x, sigma: self.velocity(transformer, x, sigma, cond)

    def patch_size(self) -> tuple[int, int, int]:
        cfg = self.transformer.config
        return cfg.patch_size_t, cfg.patch_size, cfg.patch_size
