"""Few-step generators: the trained students, with DCM's switch between experts by timestep.

Every method samples with plain Euler steps on a subset of the teacher's grid and guidance 1
(the students learned the CFG-guided teacher). Schedules, as grid indices from noise to clean:

* ``lcm``, ``pcm``: ``k`` steps spread uniformly over the grid (for PCM with ``k`` a multiple of
  its phases, the steps land on the phase edges);
* ``dcm``: ``k / 2`` steps uniform inside the semantic sub-trajectory ``[N, boundary]`` and
  ``k / 2`` inside the detail sub-trajectory ``[boundary, 0]``; the semantic expert runs at
  sigmas above the boundary's, the detail expert at and below it.

Both experts stay in memory: with PE the detail expert is the LoRA and copied layers switched in
on the shared base for the call; with OD it is a second transformer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dcm.distill.experts import ParameterEfficientExpert
from dcm.distill.trainer import EXPERT_INFO, load_full_student
from dcm.models.tiny import TinyBackbone

METHODS = ("teacher", "lcm", "pcm", "dcm")


class SamplingError(ValueError):
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
    if method in ("lcm", "pcm"):
        return uniform_indices(grid_steps, 0, steps)
    if method == "dcm":
        if steps % 2:
            raise SamplingError(f"dcm splits its steps evenly between two experts; {steps} is odd (try {steps + 1})")
        half = steps // 2
        return uniform_indices(grid_steps, boundary, half)[:-1] + uniform_indices(boundary, 0, half)
    raise SamplingError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


@dataclass
class Generator:
    """A method ready to sample: a velocity function of ``(x, sigma, text)`` and its schedule."""

    method: str
    steps: int
    indices: list[int]
    guidance_scale: float
    semantic: torch.nn.Module
    detail: torch.nn.Module | None = None  # DCM only
    boundary_sigma: float | None = None

    def uses_detail(self, sigma: float) -> bool:
        return self.detail is not None and sigma <= self.boundary_sigma + 1e-7

    @contextlib.contextmanager
    def detail_model(self) -> Iterator[torch.nn.Module]:
        """The detail expert for a run of detail steps: PE is fused in place (no reload, no
        per-step LoRA cost); OD is the second transformer already in memory."""
        if isinstance(self.detail, ParameterEfficientExpert):
            with self.detail.fused() as model:
                yield model
        else:
            yield self.detail


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise SamplingError(f"{what} is missing: expected {path} (run its DVC stage first)")


def load_generator(method: str, steps: int, backbone: TinyBackbone, params, artifacts: Path = Path("artifacts")) -> Generator:
    """Load a method's model(s) from the stage folders, checking everything before any compute."""
    from dcm import flow

    indices = schedule(method, steps, params.flow.steps, params.boundary)
    if method == "teacher":
        return Generator(method, steps, indices, params.trajectories.guidance_scale, backbone.transformer)
    if method in ("lcm", "pcm"):
        _require(artifacts / method / "model" / "config.json", f"the {method} student")
        return Generator(method, steps, indices, 1.0, load_full_student(artifacts / method))
    _require(artifacts / "semantic" / "model" / "config.json", "the semantic expert")
    _require(artifacts / "detail" / EXPERT_INFO, "the detail expert")
    semantic = load_full_student(artifacts / "semantic")
    info = json.loads((artifacts / "detail" / EXPERT_INFO).read_text())
    if info["kind"] == "none":  # ablation.od = false: one vanilla model for every step
        detail = None
    elif info["kind"] == "pe":
        _require(artifacts / "detail" / "detail.safetensors", "the PE detail expert's weights")
        detail = ParameterEfficientExpert.load(semantic, artifacts / "detail")
    else:
        detail = load_full_student(artifacts / "detail")
    boundary_sigma = float(flow.sigma_grid(params.flow.steps, params.flow.shift)[params.boundary])
    return Generator(method, steps, indices, 1.0, semantic, detail, boundary_sigma)


@torch.no_grad()
def sample(generator: Generator, backbone: TinyBackbone, prompts: list[str], seeds: list[int], params,
           batch_size: int = 16) -> torch.Tensor:
    """Latents ``(B, C, T, H, W)`` for ``prompts``, each from its seed's initial noise."""
    from dcm import flow
    from dcm.sampling import initial_noise

    world = params.world
    shape = (3, world.frames, world.size, world.size)
    sigmas = flow.sigma_grid(params.flow.steps, params.flow.shift)
    empty = backbone.encode_prompts([""])
    out = []
    for start in range(0, len(prompts), batch_size):
        text = backbone.encode_prompts(prompts[start:start + batch_size])
        x = initial_noise(seeds[start:start + batch_size], shape)
        with contextlib.ExitStack() as stack:
            model, in_detail = generator.semantic, False
            for a, b in zip(generator.indices[:-1], generator.indices[1:], strict=True):
                if generator.uses_detail(float(sigmas[a])) and not in_detail:  # one switch per batch
                    model, in_detail = stack.enter_context(generator.detail_model()), True
                if generator.guidance_scale != 1.0:
                    both = backbone.velocity(model, torch.cat([x, x]), sigmas[a],
                                             torch.cat([text, empty.expand(len(x), -1, -1)]))
                    v_cond, v_uncond = both.chunk(2)
                    v = v_uncond + generator.guidance_scale * (v_cond - v_uncond)
                else:
                    v = backbone.velocity(model, x, sigmas[a], text)
                x = flow.euler_step(x, v, sigmas[a], sigmas[b])
        out.append(x)
    return torch.cat(out)
