"""Classifier-free guidance and per-seed initial noise, shared by every sampler."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided(velocity: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
           cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float) -> VelocityFn:
    """``v_uncond + w * (v_cond - v_uncond)``; one batched call per step when guiding."""
    if uncond is None or guidance_scale == 1.0:
        return lambda x, sigma: velocity(x, sigma, cond)

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        both = torch.cat([sigma, sigma]) if sigma.ndim else sigma
        v_cond, v_uncond = velocity(torch.cat([x, x]), both, torch.cat([cond, uncond])).chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    return fn


def initial_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Per-video Gaussian noise fixed by the video's seed, so every method starts from the same noise."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
