"""What one training step draws: its generator, a batch of (video, grid point) pairs, and the
teacher's next points ``x_{i-1}`` (paper Sec. 3.1, Eq. 4-5)."""

from __future__ import annotations

import zlib

import torch

from dcm import flow
from dcm.config import Params
from dcm.data.trajectories import Trajectories
from dcm.models.base import Backbone


def step_generator(params: Params, role: str, step: int, process: int) -> torch.Generator:
    """Everything random in step ``step`` comes from here, so a resumed run draws what an
    uninterrupted one draws."""
    key = f"{params.distill.seed}/{role}/{step}/{process}".encode()
    return torch.Generator().manual_seed(zlib.crc32(key))


class Batch:
    """A random draw of (video, grid point) pairs, moved to the training device."""

    def __init__(self, data: Trajectories, points: torch.Tensor, ends: torch.Tensor, batch: int, gen: torch.Generator,
                 device: torch.device | str = "cpu"):
        self.videos = torch.randint(len(data.latents), (batch,), generator=gen)
        pick = torch.randint(len(points), (batch,), generator=gen)
        self.i, self.end = points[pick], ends[pick]
        self.x_i = data.at(self.videos, self.i).to(device)
        self.text = data.prompt_embeds[self.videos].float().to(device)


def previous_point(data: Trajectories, batch: Batch, teacher: Backbone, empty: torch.Tensor) -> torch.Tensor:
    """``x_{i-1}``: stored, or one online guided teacher Euler step from ``x_i``."""
    prev = batch.i - 1
    stored = data.stored_mask[prev]
    out = torch.empty_like(batch.x_i)
    if stored.any():
        out[stored.to(out.device)] = data.at(batch.videos[stored], prev[stored]).to(out.device)
    if (~stored).any():
        idx = (~stored).nonzero(as_tuple=True)[0]
        with torch.no_grad():
            x, s = batch.x_i[idx.to(out.device)], data.sigmas[batch.i[idx]].to(out.device)
            velocity = teacher.guided_velocity(teacher.transformer, batch.text[idx.to(out.device)],
                                               empty.expand(len(idx), -1, -1), data.spec.guidance_scale)
            out[idx.to(out.device)] = flow.euler_step(x, velocity(x, s), s, data.sigmas[prev[idx]].to(out.device))
    return out
