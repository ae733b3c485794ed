"""Flow-matching maths shared by the teacher, the students and the samplers.

Conventions (the flow-matching form of the paper's Sec. 3.1, Eq. 1-3, as HunyuanVideo and Wan use it):

* noising: ``x_sigma = sigma * eps + (1 - sigma) * x0``; the network predicts the velocity
  ``v = eps - x0`` and is called with the timestep ``t = 1000 * sigma``;
* shifted sigmas: ``s(u) = shift * u / (1 + (shift - 1) * u)`` for ``u`` in [0, 1];
* the N-step grid has points ``k = 0 .. N`` with ``sigma_k = s(k / N)``: index 0 is the clean
  end and index N (sigma 1) the noise end. Every ``boundary`` in dcm is an index on this grid;
* an Euler step from grid point ``k`` to ``j`` is ``x_j = x_k + (sigma_j - sigma_k) * v``.
"""

from __future__ import annotations

import torch

TIMESTEP_SCALE = 1000.0


def shift_sigma(u: torch.Tensor | float, shift: float) -> torch.Tensor:
    """Map uniform ``u`` in [0, 1] to shifted sigmas (``shift > 1`` crowds them near 1)."""
    u = torch.as_tensor(u, dtype=torch.float64)
    return shift * u / (1 + (shift - 1) * u)


def sigma_grid(steps: int, shift: float) -> torch.Tensor:
    """The ``steps + 1`` sigmas of the shifted Euler grid, index 0 (clean) to ``steps`` (noise)."""
    if steps < 1:
        raise ValueError(f"a sigma grid needs at least one step, got {steps}")
    return shift_sigma(torch.linspace(0, 1, steps + 1, dtype=torch.float64), shift).float()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``sigma * noise + (1 - sigma) * x0`` with ``sigma`` broadcast per sample."""
    s = _per_sample(sigma, x0)
    return s * noise + (1 - s) * x0


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """Move ``x`` along velocity ``v`` from ``sigma_from`` to ``sigma_to``."""
    return x + _per_sample(sigma_to - sigma_from, x) * v


def timestep(sigma: torch.Tensor) -> torch.Tensor:
    """The float timestep a flow-matching transformer is called with."""
    return sigma * TIMESTEP_SCALE


def last_index_below(sigmas: torch.Tensor, t: float) -> int:
    """The highest grid index whose timestep is strictly below ``t`` (0 when none is). For a teacher
    that switches transformers at ``t`` this is the boundary at which every step of the detail phase
    ``[boundary, 0]`` is taken by its low-noise transformer and every step of the semantic phase by
    its high-noise one."""
    below = (timestep(sigmas.double()) < t).nonzero()
    return int(below.max()) if len(below) else 0


def sample_training_sigmas(
    batch: int, shift: float, *, logit_normal: bool, mean: float, std: float, generator: torch.Generator
) -> torch.Tensor:
    """Training noise levels: ``u`` uniform or logit-normal (SD3), then shifted like the grid."""
    if logit_normal:
        u = torch.sigmoid(torch.randn(batch, generator=generator) * std + mean)
    else:
        u = torch.rand(batch, generator=generator)
    return shift_sigma(u, shift).float()


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if values.ndim == 0:
        return values
    return values.reshape(-1, *([1] * (like.ndim - 1)))
