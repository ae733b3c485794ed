"""Where to split the trajectory: the boundary read off the teacher's own dynamics.

The paper (Sec. 3.2, Fig. 2a) splits where the teacher's steps stop changing the sample much:
early steps decide layout and motion, late steps refine detail. Two measurements, per grid index
``k`` of the stored trajectories (``x_k``, index 0 clean, N noise):

* **normalised change**: ``mean |x_k - x_{k-1}| / (sigma_k - sigma_{k-1})``, the adjacent-step L1
  distance without the grid's step size in it (the raw distance mostly follows the step sizes);
* **commitment** (toy world only, where an evaluator knows what a video shows): the share of
  trajectories whose one-step estimate ``x0(k) = x_k - sigma_k * v_k`` already shows the final
  sample's attributes: position (mean centroid within ``POSITION_TOLERANCE_PX``), direction,
  shape and colour (the layout and motion the semantic expert decides), and texture separately
  (the detail). ``v_k`` is read off the trajectory itself: it is the teacher's guided velocity of
  the Euler step from ``k`` to ``k - 1``, so no model is run.

The suggested boundary is the noisiest index from which on (towards the clean end) layout and
motion stay committed in at least ``COMMITTED`` of the trajectories; without an evaluator, the
knee of the normalised-change curve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from dcm.data.trajectories import Trajectories

COMMITTED = 0.9
POSITION_TOLERANCE_PX = 2.0
LAYOUT = ("position", "direction", "shape", "color")


@dataclass
class BoundarySuggestion:
    boundary: int
    sigma: float
    method: str  # "commitment" (toy world) or "knee" (normalised change)
    indices: list[int]  # grid indices with a measurement, noise end first
    normalised_change: list[float]
    commitment: dict[str, list[float]] | None  # attribute -> share committed at each index
    at_boundary: dict[str, float] | None  # the shares at the suggested boundary (toy world)

    def to_json(self) -> dict:
        return asdict(self)


def normalised_change(data: Trajectories) -> tuple[list[int], list[float]]:
    """``mean |x_k - x_{k-1}| / (sigma_k - sigma_{k-1})`` for every stored pair of adjacent points."""
    stored = list(data.spec.stored)
    indices, values = [], []
    for j in range(len(stored) - 1, 0, -1):
        hi, lo = stored[j], stored[j - 1]
        step = float(data.sigmas[hi] - data.sigmas[lo])
        change = (data.latents[:, j].float() - data.latents[:, j - 1].float()).abs().mean().item()
        indices.append(hi)
        values.append(change / step)
    return indices, values


def one_step_estimates(data: Trajectories, position: int) -> torch.Tensor:
    """``x0(k) = x_k - sigma_k * v_k`` at stored position ``position`` (``v_k`` from the next stored point)."""
    k, k_prev = data.spec.stored[position], data.spec.stored[position - 1]
    x, x_prev = data.latents[:, position].float(), data.latents[:, position - 1].float()
    velocity = (x_prev - x) / float(data.sigmas[k_prev] - data.sigmas[k])
    return x - float(data.sigmas[k]) * velocity


def commitment(data: Trajectories, decode, world) -> tuple[list[int], dict[str, list[float]]]:
    """Share of trajectories whose one-step estimate at each index shows the final sample's attributes.
    ``decode`` maps latents to videos ``(T, H, W, 3)`` in [0, 1]; ``world`` is the toy world's config."""
    from dcm.world.metrics import analyze_video

    def attributes(latents: torch.Tensor) -> list[dict]:
        rows = []
        for video in decode(latents):
            a = analyze_video(video, world)
            rows.append({"position": a.position, "direction": a.direction, "shape": a.shape, "color": a.color,
                         "texture": a.texture})
        return rows

    final = attributes(data.latents[:, 0].float())
    indices, shares = [], {name: [] for name in (*LAYOUT, "layout", "texture")}
    for position in range(len(data.spec.stored) - 1, 0, -1):
        estimate = attributes(one_step_estimates(data, position))
        agree = {name: [] for name in shares}
        for got, want in zip(estimate, final, strict=True):
            near = (got["position"] is not None and want["position"] is not None
                    and np.hypot(got["position"][0] - want["position"][0],
                                 got["position"][1] - want["position"][1]) <= POSITION_TOLERANCE_PX)
            checks = {"position": near, **{n: got[n] is not None and got[n] == want[n]
                                           for n in ("direction", "shape", "color", "texture")}}
            checks["layout"] = all(checks[n] for n in LAYOUT)
            for name in agree:
                agree[name].append(checks[name])
        indices.append(data.spec.stored[position])
        for name in shares:
            shares[name].append(float(np.mean(agree[name])))
    return indices, shares


def knee(indices: list[int], values: list[float]) -> int:
    """The index farthest from the chord between the curve's ends (both axes scaled to [0, 1])."""
    x = np.asarray(indices, dtype=float)
    y = np.asarray(values, dtype=float)
    x = (x - x.min()) / max(np.ptp(x), 1e-12)
    y = (y - y.min()) / max(np.ptp(y), 1e-12)
    a, b = np.array([x[0], y[0]]), np.array([x[-1], y[-1]])
    direction = (b - a) / max(np.linalg.norm(b - a), 1e-12)
    offsets = np.stack([x, y], 1) - a
    distance = np.abs(offsets[:, 0] * direction[1] - offsets[:, 1] * direction[0])
    return int(indices[int(np.argmax(distance))])


def suggest(data: Trajectories, decode=None, world=None) -> BoundarySuggestion:
    """The boundary suggestion for these trajectories (see the module docstring)."""
    indices, change = normalised_change(data)
    if decode is None or world is None:
        k = knee(indices, change)
        return BoundarySuggestion(k, float(data.sigmas[k]), "knee", indices, change, None, None)
    c_indices, shares = commitment(data, decode, world)
    assert c_indices == indices
    layout = shares["layout"]
    # from the clean end upwards, the last index before layout commitment drops below COMMITTED
    k = indices[-1]
    for index, share in zip(reversed(indices), reversed(layout), strict=True):
        if share < COMMITTED:
            break
        k = index
    n = data.spec.steps
    k = min(max(k, 1), n - 1)
    at = {name: values[indices.index(k)] for name, values in shares.items()} if k in indices else None
    return BoundarySuggestion(k, float(data.sigmas[k]), "commitment", indices, change, shares, at)
