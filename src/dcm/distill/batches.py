"""What one training step draws: its generator, a batch of (video, grid point) pairs, and the
teacher's next points ``x_{i-1}`` (paper Sec. 3.1, Eq. 4-5).

A training point ``x_i`` comes from one of two sources (``distill.source``):

* :class:`TrajectorySource`: the teacher's stored ODE trajectories; ``x_{i-1}`` is stored too, or
  one online guided teacher step where ``trajectories.store_every`` skipped it;
* :class:`DataSource`: a dataset video's clean latent noised to grid point ``i`` with fresh noise
  (the release's recipe), its caption dropped at ``distill.caption_dropout``; ``x_{i-1}`` is
  always one guided teacher Euler step from ``x_i``.
"""

from __future__ import annotations

import zlib

import torch

from dcm import flow
from dcm.config import Params
from dcm.data.trajectories import Trajectories
from dcm.data.video_dataset import VideoLatents
from dcm.layout import Layout
from dcm.models.base import Backbone


def step_generator(params: Params, role: str, step: int, process: int) -> torch.Generator:
    """Everything random in step ``step`` comes from here, so a resumed run draws what an
    uninterrupted one draws."""
    key = f"{params.distill.seed}/{role}/{step}/{process}".encode()
    return torch.Generator().manual_seed(zlib.crc32(key))


class TrajectorySource:
    """Training points on the teacher's stored trajectories."""

    name = "trajectories"

    def __init__(self, data: Trajectories):
        self.data, self.sigmas, self.guidance_scale = data, data.sigmas, data.spec.guidance_scale
        self.guidance_scale_2 = data.spec.guidance_scale_2  # a two-expert teacher's, below its switch
        self.prompt_embeds, self.videos = data.prompt_embeds, len(data.latents)
        self.stored = data.stored_mask  # grid indices whose latent is on disk
        self.drawable = self.stored  # grid indices a training point can be drawn at

    def points(self, videos: torch.Tensor, grid_index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.data.at(videos, grid_index)

    def text(self, videos: torch.Tensor, gen: torch.Generator, empty: torch.Tensor) -> torch.Tensor:
        return self.prompt_embeds[videos].float()


class DataSource:
    """Training points noised from the clean latents of a video dataset."""

    name = "data"

    def __init__(self, data: VideoLatents, sigmas: torch.Tensor, guidance_scale: float, caption_dropout: float,
                 guidance_scale_2: float | None = None):
        self.data, self.sigmas, self.guidance_scale = data, sigmas, guidance_scale
        self.guidance_scale_2 = guidance_scale_2  # a two-expert teacher's, below its switch
        self.prompt_embeds, self.videos = data.prompt_embeds, len(data.latents)
        self.caption_dropout = caption_dropout
        self.stored = torch.zeros(len(sigmas), dtype=torch.bool)  # nothing on the teacher's trajectory is stored
        self.drawable = torch.ones(len(sigmas), dtype=torch.bool)  # any grid point: noise the clean latent to it

    def points(self, videos: torch.Tensor, grid_index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        clean = self.data.latents[videos].float()
        noise = torch.randn(clean.shape, generator=gen)
        return flow.add_noise(clean, noise, self.sigmas[grid_index])

    def text(self, videos: torch.Tensor, gen: torch.Generator, empty: torch.Tensor) -> torch.Tensor:
        text = self.prompt_embeds[videos].float()
        dropped = torch.rand(len(videos), generator=gen) < self.caption_dropout
        text[dropped, :len(empty)] = empty.to("cpu", text.dtype)  # the text rows (an I2V image stays)
        return text


Source = TrajectorySource | DataSource


def teacher_calls(params: Params, branches: int, processes: int = 1) -> dict[str, tuple[int, int]]:
    """Teacher transformer calls each source costs for the semantic and detail steps of ``params``:
    ``{source: (before distillation, during it)}``, with ``branches`` calls per guided step (2 with CFG).
    Trajectories: a guided solve per video up front, and an online step for each point
    ``store_every`` skipped; data: one online guided step per sample (the release's recipe)."""
    t, d = params.trajectories, params.distill
    steps = params.semantic.steps + (params.detail.steps if params.ablation.od else 0)
    samples = steps * d.batch_size * processes
    return {"trajectories": (t.videos * params.flow.steps * branches,
                             round(samples * (t.store_every - 1) / t.store_every * branches)),
            "data": (0, samples * branches)}


def load_source(params: Params, layout: Layout, teacher: Backbone) -> Source:
    """The training points ``distill.source`` names, loaded and checked against the params."""
    from dcm.data import trajectories, video_dataset

    d = params.distill
    if d.source == "data":
        data = video_dataset.load(layout.source("data"), video_dataset.spec_from_params(params, teacher))
        sigmas = teacher.sigma_grid(params.flow.steps, params.flow.shift)
        return DataSource(data, sigmas, params.trajectories.guidance_scale, d.caption_dropout,
                          params.trajectories.guidance_scale_2)
    spec = trajectories.TrajectorySpec.from_params(params, trajectories.latent_shape(params, teacher))
    return TrajectorySource(trajectories.load(layout.source("trajectories"), spec))


class Batch:
    """A random draw of (video, grid point) pairs, moved to the training device."""

    def __init__(self, source: Source, points: torch.Tensor, ends: torch.Tensor, batch: int, gen: torch.Generator,
                 empty: torch.Tensor, device: torch.device | str = "cpu"):
        self.videos = torch.randint(source.videos, (batch,), generator=gen)
        pick = torch.randint(len(points), (batch,), generator=gen)
        self.i, self.end = points[pick], ends[pick]
        self.x_i = source.points(self.videos, self.i, gen).to(device)
        self.text = source.text(self.videos, gen, empty[0]).to(device)  # empty: the empty prompt's (1, L, D)


def previous_point(source: Source, batch: Batch, teacher: Backbone, empty: torch.Tensor) -> torch.Tensor:
    """``x_{i-1}``: stored, or one online guided teacher Euler step from ``x_i``."""
    prev = batch.i - 1
    stored = source.stored[prev]
    out = torch.empty_like(batch.x_i)
    if stored.any():
        out[stored.to(out.device)] = source.points(batch.videos[stored], prev[stored], None).to(out.device)
    if (~stored).any():
        idx = (~stored).nonzero(as_tuple=True)[0]
        with torch.no_grad():
            x, s = batch.x_i[idx.to(out.device)], source.sigmas[batch.i[idx]].to(out.device)
            velocity = teacher.guided_velocity(teacher.transformer, batch.text[idx.to(out.device)],
                                               empty.expand(len(idx), -1, -1), source.guidance_scale,
                                               source.guidance_scale_2)
            out[idx.to(out.device)] = flow.euler_step(x, velocity(x, s), s, source.sigmas[prev[idx]].to(out.device))
    return out
