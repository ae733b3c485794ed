"""The sampler: Euler steps on a schedule, with DCM's switch between experts by timestep.

Every method samples with plain Euler steps on a subset of the teacher's grid; the students with
guidance 1 (they learned the CFG-guided teacher), the teacher and ``undistilled`` with its CFG. Schedules, as grid indices from noise to clean:

* ``undistilled``, ``lcm``, ``pcm``: ``k`` steps spread uniformly over the grid (for PCM with ``k``
  a multiple of its phases, the steps land on the phase edges);
* ``dcm``: ``k / 2`` steps uniform inside the semantic sub-trajectory ``[N, boundary]`` and
  ``k / 2`` inside the detail sub-trajectory ``[boundary, 0]``; the semantic expert runs at
  sigmas above the boundary's, the detail expert at and below it.

Both experts stay in memory: with PE the detail expert is the LoRA and copied layers switched in
on the shared base (fused, :meth:`dcm.experts.ParameterEfficientExpert.fused`); with OD it is a
second transformer. Loading trained students into a :class:`Sampler` is :mod:`dcm.students`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dcm import flow
from dcm.errors import DcmError
from dcm.guidance import initial_noise
from dcm.models.base import Backbone

# ``undistilled``: the teacher itself with its CFG on LCM's few-step schedule, the control that says
# what distillation adds over plain few-step Euler sampling
METHODS = ("teacher", "undistilled", "lcm", "pcm", "dcm")


class SamplingError(DcmError, ValueError):
    """A method or step count that cannot be served, or a student that is not there."""


def uniform_indices(start: int, end: int, steps: int) -> list[int]:
    """``steps + 1`` grid indices from ``start`` down to ``end``, as evenly spaced as integers allow."""
    if steps < 1 or steps > start - end:
        raise SamplingError(f"cannot take {steps} steps between grid indices {start} and {end}")
    return [round(start - (start - end) * j / steps) for j in range(steps + 1)]


def schedule(method: str, steps: int, grid_steps: int, boundary: int) -> list[int]:
    """Grid indices a method visits, noise end first."""
    if method == "teacher":
        if steps != grid_steps:
            raise SamplingError(f"the teacher samples the full {grid_steps}-step grid, not {steps} steps")
        return list(range(grid_steps, -1, -1))
    if method in ("undistilled", "lcm", "pcm"):
        return uniform_indices(grid_steps, 0, steps)
    if method == "dcm":
        if steps % 2:
            raise SamplingError(f"dcm splits its steps evenly between two experts; {steps} is odd (try {steps + 1})")
        half = steps // 2
        return uniform_indices(grid_steps, boundary, half)[:-1] + uniform_indices(boundary, 0, half)
    raise SamplingError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def stock_sigmas(steps: int, shift: float) -> list[float]:
    """The sigmas (noise end first, ending at 0) that a stock ``FlowMatchEulerDiscreteScheduler(shift)``
    visits after ``set_timesteps(steps)``, read from a real scheduler so they match it bit for bit:
    what an exported pipeline runs (``sample.schedule: stock``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    return [float(s) for s in scheduler.sigmas]


@dataclass
class Sampler:
    """A method ready to sample: its model(s), the noise levels it visits and its guidance."""

    method: str
    steps: int
    sigmas: list[float]  # visited noise levels, noise end first
    guidance_scale: float
    semantic: torch.nn.Module
    detail: torch.nn.Module | None = None  # DCM only
    boundary_sigma: float | None = None
    guidance_scale_2: float | None = None  # a two-expert teacher's scale below its switch (None: guidance_scale)

    def uses_detail(self, sigma: float) -> bool:
        return self.detail is not None and sigma <= self.boundary_sigma + 1e-7

    @contextlib.contextmanager
    def detail_model(self) -> Iterator[torch.nn.Module]:
        """The detail expert for a run of detail steps: PE is fused in place (no reload, no
        per-step LoRA cost); OD is the second transformer already in memory."""
        if hasattr(self.detail, "fused"):  # a ParameterEfficientExpert
            with self.detail.fused() as model:
                yield model
        else:
            yield self.detail


def method_sigmas(method: str, steps: int, backbone: Backbone, params) -> list[float]:
    """The noise levels a method visits at ``steps`` steps, noise end first (checks the schedule)."""
    grid = backbone.sigma_grid(params.flow.steps, params.flow.shift)
    sigmas = [float(grid[i]) for i in schedule(method, steps, params.flow.steps, params.boundary)]
    if method != "teacher" and params.sample.schedule == "stock":
        return stock_sigmas(steps, params.flow.shift)
    return sigmas


def teacher_sampler(backbone: Backbone, transformer: torch.nn.Module, steps: int, shift: float,
                    guidance_scale: float, guidance_scale_2: float | None = None) -> Sampler:
    """The teacher with guidance on its full ``steps``-step grid."""
    sigmas = backbone.sigma_grid(steps, shift).flip(0).tolist()
    return Sampler("teacher", steps, sigmas, guidance_scale, transformer.eval(), guidance_scale_2=guidance_scale_2)


@torch.no_grad()
def sample(sampler: Sampler, backbone: Backbone, prompts: list[str], seeds: list[int],
           shape: tuple[int, ...], batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """Latents ``(B, C, T, H, W)`` of latent ``shape`` for ``prompts``, each from its seed's noise."""
    device = next(sampler.semantic.parameters()).device
    empty = backbone.encode_prompts([""]).to(device)
    sigmas = torch.tensor(sampler.sigmas)
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=f"{sampler.method}@{sampler.steps}",
                      unit="batch", disable=not progress, leave=False):
        text = backbone.encode_prompts(prompts[start:start + batch_size]).to(device)
        noise = initial_noise(seeds[start:start + batch_size], shape).to(device)
        x = backbone.initial_latents(noise, sampler.sigmas[0])
        with contextlib.ExitStack() as stack:
            model, in_detail = sampler.semantic, False
            for a, b in zip(sigmas[:-1], sigmas[1:], strict=True):
                if sampler.uses_detail(float(a)) and not in_detail:  # one switch per batch
                    model, in_detail = stack.enter_context(sampler.detail_model()), True
                velocity = backbone.guided_velocity(model, text, empty.expand(len(x), -1, -1), sampler.guidance_scale,
                                                    sampler.guidance_scale_2)
                x = flow.euler_step(x, velocity(x, a), a, b)
        out.append(x.cpu())
    return torch.cat(out)
