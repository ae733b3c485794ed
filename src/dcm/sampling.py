"""Euler sampling on the sigma grid, with classifier-free guidance."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from dcm import flow

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


@torch.no_grad()
def euler_sample(velocity: VelocityFn, noise: torch.Tensor, sigmas: Sequence[float] | torch.Tensor,
                 progress: bool = False, desc: str = "sampling") -> torch.Tensor:
    """Integrate from ``sigmas[0]`` (noise) down to ``sigmas[-1]`` with plain Euler steps."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    x = noise
    for i in tqdm(range(len(sigmas) - 1), desc=desc, disable=not progress, leave=False):
        v = velocity(x, sigmas[i])
        x = flow.euler_step(x, v, sigmas[i], sigmas[i + 1])
    return x


def initial_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Per-video Gaussian noise fixed by the video's seed, so every method starts from the same noise."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
