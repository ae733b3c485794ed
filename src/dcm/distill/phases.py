"""Sub-trajectories ("phases") on the teacher's grid, and which ones each method learns.

Index convention (the same everywhere in dcm): grid index 0 is the clean end (sigma 0) and
``N = flow.steps`` the noise end (sigma 1). A phase ``[start, end]`` with ``start > end`` covers
the grid points from ``start`` down to ``end``; a consistency model maps every point ``i`` with
``end < i <= start`` to the phase end. ``boundary = kappa`` splits the trajectory into the
semantic phase ``[N, kappa]`` and the detail phase ``[kappa, 0]``. With the release's shift 17
on a 50-step grid, ``boundary = 35`` is sigma 0.97541 (its Wan boundary) and ``38`` is sigma
0.98176 (its HunyuanVideo boundary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Role = Literal["semantic", "detail", "vanilla", "lcm", "pcm"]


@dataclass(frozen=True)
class Phase:
    start: int  # noise side (larger grid index)
    end: int  # clean side; the consistency target of every point in the phase

    def __post_init__(self) -> None:
        if not self.start > self.end >= 0:
            raise ValueError(f"a phase needs start > end >= 0, got [{self.start}, {self.end}]")


def even_phases(steps: int, count: int) -> list[Phase]:
    """``count`` phases splitting grid indices ``steps .. 0`` as evenly as integers allow (PCM)."""
    if not 1 <= count <= steps:
        raise ValueError(f"cannot split a {steps}-step grid into {count} phases")
    edges = [round(steps * (count - k) / count) for k in range(count + 1)]
    return [Phase(edges[k], edges[k + 1]) for k in range(count)]


def phases_for(role: Role, steps: int, boundary: int, pcm_phases: int = 4) -> list[Phase]:
    """The phases a student of this role learns."""
    if not 1 <= boundary <= steps - 1:
        raise ValueError(f"boundary = {boundary} must be in [1, {steps - 1}]")
    if role == "semantic":
        return [Phase(steps, boundary)]
    if role == "detail":
        return [Phase(boundary, 0)]
    if role == "vanilla":  # one model, no expert split, both sub-trajectories (Table 3 row 1)
        return [Phase(steps, boundary), Phase(boundary, 0)]
    if role == "lcm":
        return [Phase(steps, 0)]
    if role == "pcm":
        return even_phases(steps, pcm_phases)
    raise ValueError(f"unknown role {role!r}; known: semantic, detail, vanilla, lcm, pcm")


def trainable_points(phases: list[Phase], stored: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every grid index ``i`` a student trains on and the end of its phase (``end < i <= start``).

    ``stored`` (bool per grid index) restricts ``i`` to points whose latent is kept on disk.
    """
    points, ends = [], []
    for phase in phases:
        for i in range(phase.start, phase.end, -1):
            if stored is None or bool(stored[i]):
                points.append(i)
                ends.append(phase.end)
    if not points:
        raise ValueError(f"no stored grid point inside the phases {phases}")
    return torch.tensor(points), torch.tensor(ends)
