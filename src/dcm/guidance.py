"""Classifier-free guidance and per-seed initial noise, shared by every sampler."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: a guidance scale, or one that depends on the noise level: ``fn(sigma)`` gives a number for one sigma,
#: and scales broadcastable over the batch for a sigma per sample (a two-expert teacher's two scales)
GuidanceScale = float | Callable[[torch.Tensor], float | torch.Tensor]


def guided(velocity: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
           cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: GuidanceScale) -> VelocityFn:
    """``v_uncond + w * (v_cond - v_uncond)``; one batched call per step when guiding."""
    if uncond is None or guidance_scale == 1.0:
        return lambda x, sigma: velocity(x, sigma, cond)

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        both = torch.cat([sigma, sigma]) if sigma.ndim else sigma
        v_cond, v_uncond = velocity(torch.cat([x, x]), both, torch.cat([cond, uncond])).chunk(2)
        w = guidance_scale(sigma) if callable(guidance_scale) else guidance_scale
        return v_uncond + (w.to(v_cond) if isinstance(w, torch.Tensor) else w) * (v_cond - v_uncond)

    return fn


def initial_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Per-video Gaussian noise fixed by the video's seed, so every method starts from the same noise."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
