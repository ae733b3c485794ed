"""A deterministic renderer: ``(prompt, seed) -> video``.

Videos are float arrays shaped ``(T, H, W, 3)`` with values in ``[0, 1]``. A saturated,
anti-aliased shape moves at constant velocity over a static grayscale texture with fine,
high-frequency detail. The seed fixes the start position, the speed and the texture, so the
same ``(prompt, seed)`` always renders the same video, and the evaluator can compare anything
against rendered ground truth.

Two kinds of texture (``WorldConfig.textures``):

- ``periodic`` (the first world): the prompt fixes a periodic pattern and the seed only its
  phase, one of ``texture_period**2`` possibilities. Any student renders it sharply.
- ``random``: the prompt fixes the texture's *statistics* (vertical bands, diagonal bands or
  square cells, each ``texture_cell`` px wide and dark or light at random) and the seed draws
  every band or cell, ``2**16`` realisations or more. Fine detail is then decided only at low
  noise, and a model that averages over realisations renders a blurred gray: the failure of
  few-step sampling that the paper's detail expert addresses (Sec. 3.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dcm.world.grammar import COLORS, DIRECTIONS, Prompt, parse_prompt


@dataclass(frozen=True)
class WorldConfig:
    """Geometry of the toy world. Lengths are in pixels of a ``size`` x ``size`` frame."""

    frames: int = 8
    size: int = 32
    object_radius: float = 5.0
    speed_min: float = 1.0
    speed_max: float = 2.0
    texture_period: int = 4
    textures: str = "periodic"  # periodic | random (see the module docstring)
    texture_cell: int = 2  # random textures: width of a band or cell, px
    edge_start: float | None = None  # None: start anywhere the whole path fits; else within this many px of
    #                                  the edge the object moves away from (anywhere along the other axis)
    texture_low: float = 0.30
    texture_high: float = 0.60

    @property
    def extent(self) -> float:
        """Largest distance from an object's centroid to its outline (the triangle's)."""
        return self.object_radius * _TRIANGLE_CIRCUMRADIUS

    def check(self) -> None:
        travel = self.speed_max * (self.frames - 1)
        room = self.size - 2 * (self.extent + 1.0)
        if travel > room:
            raise ValueError(
                f"world: an object moving {self.speed_max} px/frame for {self.frames} frames travels "
                f"{travel:.1f} px but a {self.size}px frame leaves only {room:.1f} px of room; "
                "lower world.speed_max or world.object_radius, or raise world.size"
            )


# Equal-area shapes: a square of half-side a and an equilateral triangle of circumradius R
# cover the same area as a circle of radius r.
_SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2
_TRIANGLE_CIRCUMRADIUS = math.sqrt(4 * math.pi / (3 * math.sqrt(3)))


@dataclass(frozen=True)
class Layout:
    """What the seed decides about one video."""

    start: tuple[float, float]
    velocity: tuple[float, float]
    phase: tuple[int, int]
    texture_seed: int  # random textures: draws every band or cell (a stream apart from the layout's)


def draw_layout(prompt: Prompt, seed: int, cfg: WorldConfig) -> Layout:
    """Draw the seed-dependent part of a video so the object stays inside the frame."""
    rng = np.random.default_rng(seed)
    speed = float(rng.uniform(cfg.speed_min, cfg.speed_max))
    dx, dy = DIRECTIONS[prompt.direction]
    lo, hi = cfg.extent + 1.0, cfg.size - cfg.extent - 1.0
    travel = speed * (cfg.frames - 1)
    start = []
    edge = cfg.edge_start
    for d in (dx, dy):
        if d > 0:
            start.append(float(rng.uniform(lo, hi - travel if edge is None else min(lo + edge, hi - travel))))
        elif d < 0:
            start.append(float(rng.uniform(lo + travel if edge is None else max(hi - edge, lo + travel), hi)))
        else:
            start.append(float(rng.uniform(lo, hi)))
    phase = (int(rng.integers(cfg.texture_period)), int(rng.integers(cfg.texture_period)))
    return Layout(
        start=(start[0], start[1]),
        velocity=(dx * speed, dy * speed),
        phase=phase,
        texture_seed=seed,
    )


def render_texture(texture: str, phase: tuple[int, int], cfg: WorldConfig, texture_seed: int = 0) -> np.ndarray:
    """A static grayscale background, ``(H, W)`` in ``[0, 1]``: periodic at ``phase``, or random
    realisation ``texture_seed`` (``cfg.textures``)."""
    if cfg.textures == "random":
        return render_random_texture(texture, texture_seed, cfg)
    n = cfg.size
    half = cfg.texture_period // 2
    y, x = np.mgrid[0:n, 0:n]
    if texture == "stripes":
        bit = ((x + phase[0]) // half) % 2
    elif texture == "checker":
        bit = (((x + phase[0]) // half) + ((y + phase[1]) // half)) % 2
    elif texture == "diagonal":
        bit = ((x + y + phase[0]) // half) % 2
    else:  # grammar validation happens in Prompt; this guards direct callers
        raise ValueError(f"unknown texture {texture!r}")
    return (cfg.texture_low + (cfg.texture_high - cfg.texture_low) * bit).astype(np.float32)


# Of each random texture: the pixel step along which it stays constant (None: none does).
RANDOM_TEXTURE_CONSTANT_STEP: dict[str, tuple[int, int] | None] = {
    "stripes": (0, 1),  # vertical bands: constant down a column
    "diagonal": (1, -1),  # bands of constant x + y
    "checker": None,  # square cells, each dark or light at random
}


def render_random_texture(texture: str, texture_seed: int, cfg: WorldConfig) -> np.ndarray:
    """A random realisation of ``texture``: bands or cells ``cfg.texture_cell`` px wide, each dark or
    light with probability 1/2, drawn from ``texture_seed`` alone."""
    n, cell = cfg.size, cfg.texture_cell
    rng = np.random.default_rng([texture_seed, 0x7E27])  # apart from draw_layout's stream
    y, x = np.mgrid[0:n, 0:n]
    if texture == "stripes":
        bit = rng.integers(0, 2, n // cell + 1)[x // cell]
    elif texture == "diagonal":
        bit = rng.integers(0, 2, 2 * n // cell + 1)[(x + y) // cell]
    elif texture == "checker":
        bit = rng.integers(0, 2, (n // cell + 1, n // cell + 1))[y // cell, x // cell]
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return (cfg.texture_low + (cfg.texture_high - cfg.texture_low) * bit).astype(np.float32)


def shape_coverage(shape: str, cx: np.ndarray, cy: np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """Anti-aliased coverage in ``[0, 1]`` of a shape centred at ``(cx[t], cy[t])``: ``(T, H, W)``."""
    n = cfg.size
    py, px = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    dx = px[None] - np.asarray(cx, np.float32)[:, None, None]
    dy = py[None] - np.asarray(cy, np.float32)[:, None, None]
    r = cfg.object_radius
    if shape == "circle":
        sdf = np.sqrt(dx**2 + dy**2) - r
    elif shape == "square":
        sdf = np.maximum(np.abs(dx), np.abs(dy)) - r * _SQUARE_HALF_SIDE
    elif shape == "triangle":  # equilateral, pointing up (image y grows downwards)
        big_r = r * _TRIANGLE_CIRCUMRADIUS
        c, s = math.sqrt(3) / 2, 0.5
        sdf = np.maximum.reduce([dy, -c * dx - s * dy, c * dx - s * dy]) - big_r / 2
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)


def render_video(prompt: Prompt | str, seed: int, cfg: WorldConfig = WorldConfig()) -> np.ndarray:
    """Render one video, ``(T, H, W, 3)`` float32 in ``[0, 1]``."""
    if isinstance(prompt, str):
        prompt = parse_prompt(prompt)
    layout = draw_layout(prompt, seed, cfg)
    t = np.arange(cfg.frames, dtype=np.float32)
    cx = layout.start[0] + layout.velocity[0] * t
    cy = layout.start[1] + layout.velocity[1] * t
    alpha = shape_coverage(prompt.shape, cx, cy, cfg)[..., None]
    background = render_texture(prompt.texture, layout.phase, cfg, layout.texture_seed)
    background = np.broadcast_to(background[None, :, :, None], alpha.shape[:3] + (3,))
    color = np.asarray(COLORS[prompt.color], np.float32)
    return (alpha * color + (1 - alpha) * background).astype(np.float32)


def render_batch(prompts: list[Prompt], seeds: list[int], cfg: WorldConfig = WorldConfig()) -> torch.Tensor:
    """Render a batch as the models see it: ``(B, 3, T, H, W)`` in ``[-1, 1]``."""
    videos = np.stack([render_video(p, s, cfg) for p, s in zip(prompts, seeds, strict=True)])
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).mul(2).sub(1).contiguous()


def to_video(x: torch.Tensor) -> np.ndarray:
    """``(3, T, H, W)`` in [-1, 1] -> ``(T, H, W, 3)`` float32 in [0, 1], clipped."""
    return x.detach().float().add(1).div(2).clamp(0, 1).permute(1, 2, 3, 0).cpu().numpy()
