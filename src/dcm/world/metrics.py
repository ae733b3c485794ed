"""An analytic evaluator for toy-world videos: attributes, quality dimensions and scores.

Because the world is procedural, every quantity VBench estimates with learned networks can
be measured here from pixels: the object is the only saturated thing in the frame, the
background is a known static texture, and the motion is known to be linear.

Scores follow VBench's recipe (Huang et al., arXiv 2311.17982, and its `scripts/cal_final_score.py`): each dimension is averaged over videos,
normalised as ``(raw - Min) / (Max - Min)`` (clipped to [0, 1]) and weighted; Quality and
Semantic are weighted means of their dimensions and ``Total = (4 * Quality + Semantic) / 5``.
``Min`` is what pure uniform noise videos score on a quality dimension (measured with
:func:`calibrate_noise_floor`, which the tests re-run) and chance level on a semantic one;
``Max`` is 1.0, which rendered ground truth reaches.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dcm.world.grammar import COLORS, DIRECTIONS, SHAPES, TEXTURES, Prompt, parse_prompt
from dcm.world.render import RANDOM_TEXTURE_CONSTANT_STEP, WorldConfig, render_texture, shape_coverage

QUALITY_DIMENSIONS: dict[str, float] = {  # name -> weight (VBench gives dynamic degree 0.5)
    "subject_consistency": 1.0,
    "background_consistency": 1.0,
    "temporal_flickering": 1.0,
    "motion_smoothness": 1.0,
    "dynamic_degree": 0.5,
    "detail": 1.0,
}
SEMANTIC_DIMENSIONS: dict[str, float] = {
    "color": 1.0,
    "object_class": 1.0,
    "motion_direction": 1.0,
    "scene": 1.0,
}
# Min per dimension: quality dims from calibrate_noise_floor(), semantic dims at chance.
NORMALISATION_MIN: dict[str, float] = {
    "subject_consistency": 0.0,
    "background_consistency": 0.0054,
    "temporal_flickering": 0.6666,
    "motion_smoothness": 0.0,
    "dynamic_degree": 0.0,
    "detail": 0.6946,
    "color": 1 / len(COLORS),
    "object_class": 1 / len(SHAPES),
    "motion_direction": 1 / len(DIRECTIONS),
    "scene": 1 / len(TEXTURES),
}
NORMALISATION_MAX = 1.0
# ``detail`` of uniform-noise videos where textures are random (calibrate_noise_floor): its Min there
RANDOM_TEXTURE_DETAIL_MIN = 0.009

_CORE_SATURATION = 0.5  # pixels this saturated are certainly object (all palette colours are)
_MIN_ALPHA = 0.15  # coverage below this is treated as background noise
_AREA_RANGE = (0.3, 3.0)  # a frame "has the object" if its area is within this share of expected
_TEXTURE_CORRELATION = 0.5  # a texture is recognised above this correlation with its template


@dataclass
class VideoAnalysis:
    """What the evaluator recovers from one video, and its quality dimensions (raw)."""

    color: str | None
    shape: str | None
    direction: str | None
    texture: str | None
    speed: float
    position: tuple[float, float] | None  # mean centroid (x, y) over the frames that show the object
    subject_consistency: float
    background_consistency: float
    temporal_flickering: float
    motion_smoothness: float
    dynamic_degree: float
    detail: float

    def semantic(self, prompt: Prompt) -> dict[str, float]:
        return {
            "color": float(self.color == prompt.color),
            "object_class": float(self.shape == prompt.shape),
            "motion_direction": float(self.direction == prompt.direction),
            "scene": float(self.texture == prompt.texture),
        }

    def quality(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in QUALITY_DIMENSIONS}


def _saturation(video: np.ndarray) -> np.ndarray:
    return video.max(-1) - video.min(-1)


def _object_alpha(saturation: np.ndarray, color: str) -> np.ndarray:
    """Coverage of the object: over a gray background, ``max - min`` of a blend is exactly
    ``alpha * saturation(colour)``, so dividing recovers the renderer's anti-aliased alpha."""
    rgb = COLORS[color]
    alpha = np.clip(saturation / (max(rgb) - min(rgb)), 0.0, 1.0)
    return np.where(alpha >= _MIN_ALPHA, alpha, 0.0)


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[:, None]
    return F.max_pool2d(t, 2 * pixels + 1, stride=1, padding=pixels)[:, 0].numpy()


def _centred_crops(image: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: int) -> np.ndarray:
    """Bilinear crops ``(T, C, 2*half, 2*half)`` centred (sub-pixel) on each centroid."""
    t, h, w, c = image.shape
    offsets = torch.arange(-half, half, dtype=torch.float32) + 0.5
    gx = (torch.from_numpy(cx).float()[:, None] + offsets[None]) / w * 2 - 1
    gy = (torch.from_numpy(cy).float()[:, None] + offsets[None]) / h * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    src = torch.from_numpy(np.ascontiguousarray(image)).permute(0, 3, 1, 2).float()
    return F.grid_sample(src, grid, align_corners=False, padding_mode="zeros").numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    return _cosine(a, b)


def _consistency(features: list[np.ndarray], similarity) -> float:
    """VBench's recipe: mean over frames of the similarity to the first and to the previous."""
    if len(features) < 2:
        return 0.0
    scores = [
        (similarity(features[0], f) + similarity(features[i - 1], f)) / 2
        for i, f in enumerate(features[1:], start=1)
    ]
    return float(np.clip(np.mean(scores), 0.0, 1.0))


def _laplacian_energy(image: np.ndarray, weight: np.ndarray) -> float:
    lap = 4 * image[1:-1, 1:-1] - image[:-2, 1:-1] - image[2:, 1:-1] - image[1:-1, :-2] - image[1:-1, 2:]
    inner = weight[1:-1, 1:-1] * weight[:-2, 1:-1] * weight[2:, 1:-1] * weight[1:-1, :-2] * weight[1:-1, 2:]
    return float((np.abs(lap) * inner).sum() / max(inner.sum(), 1.0))


def _classify_texture(background: np.ndarray, visible: np.ndarray, cfg: WorldConfig) -> str | None:
    pixels = visible > 0
    if pixels.sum() < 16:
        return None
    best_name, best_corr = None, 0.0
    period = cfg.texture_period
    for name in TEXTURES:
        phases = [(p, q) for p in range(period) for q in range(period)] if name == "checker" else [
            (p, 0) for p in range(period)
        ]
        for phase in phases:
            template = render_texture(name, phase, cfg)
            corr = _correlation(background[pixels], template[pixels])
            if corr > best_corr:
                best_name, best_corr = name, corr
    return best_name if best_corr >= _TEXTURE_CORRELATION else None


_STEPS = ((1, 0), (0, 1), (1, -1), (1, 1))  # x, y and the two diagonals (image y grows downwards)
_FLAT = 0.05  # mean change below this share of the texture's contrast: no texture at all
_CONSTANT = 0.2  # a step along which the change is below this share of the largest: the texture is constant


def _mean_change(image: np.ndarray, visible: np.ndarray, step: tuple[int, int]) -> float:
    """Mean |I(p + step) - I(p)| over pairs of visible pixels."""
    dx, dy = step
    h, w = image.shape
    ys, xs = slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx))
    ys2, xs2 = slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx))
    pairs = visible[ys, xs] * visible[ys2, xs2]
    return float((np.abs(image[ys2, xs2] - image[ys, xs]) * pairs).sum() / max(pairs.sum(), 1.0))


def _random_texture(background: np.ndarray, visible: np.ndarray, cfg: WorldConfig,
                    prompt: Prompt | None) -> tuple[str | None, float]:
    """Texture class and ``detail`` of a random-texture background, from statistics a viewer checks.

    The class is the direction along which the background does not change (down a column: stripes;
    along x + y: diagonal; none: checker cells). ``detail`` against the prompt's texture (else the
    recovered one) is the product of sharpness (how far pixels sit from the mid level, as a share of
    the texture's contrast: a blurred, averaged texture is gray), orientation (no change along the
    named constant direction; equal change along x and y for cells) and density (changes per pixel
    along x within half and twice a ``texture_cell``-wide random texture's). Rendered ground truth
    scores 1 on each, up to its own randomness in density.
    """
    if visible.sum() < 16:
        return None, 0.0
    half_contrast = (cfg.texture_high - cfg.texture_low) / 2
    change = {step: _mean_change(background, visible, step) for step in _STEPS}
    largest = max(change.values())
    texture = None
    if largest >= _FLAT * half_contrast:
        constant = [name for name, step in RANDOM_TEXTURE_CONSTANT_STEP.items()
                    if step is not None and change[step] < _CONSTANT * largest]
        if len(constant) == 1:
            texture = constant[0]
        elif not constant and min(change.values()) >= 2 * _CONSTANT * largest:
            texture = "checker"
    reference = prompt.texture if prompt is not None else texture
    if reference is None:
        return texture, 0.0
    pixels = visible > 0
    mid = (cfg.texture_high + cfg.texture_low) / 2
    sharpness = float(np.minimum(np.abs(background[pixels] - mid), half_contrast).mean() / half_contrast)
    step = RANDOM_TEXTURE_CONSTANT_STEP[reference]
    if step is None:
        across, along = sorted((change[(1, 0)], change[(0, 1)]))
        orientation = min(1.0, across / along / 0.8) if along > 0 else 0.0
    else:
        orientation = max(0.0, 1.0 - change[step] / largest) if largest > 0 else 0.0
    # a texture_cell-wide band or cell boundary every cell px, crossed with a change half the time
    expected = 2 * half_contrast * 0.5 / cfg.texture_cell
    ratio = change[(1, 0)] / expected
    density = min(1.0, 2 * ratio, 2 / ratio) if ratio > 0 else 0.0
    return texture, sharpness * orientation * density


@functools.lru_cache(maxsize=64)
def _reference_detail(texture: str, cfg: WorldConfig) -> float:
    """Laplacian energy of a rendered background of this texture (the sharpness target)."""
    image = render_texture(texture, (0, 0), cfg)
    return _laplacian_energy(image, np.ones_like(image))


def analyze_video(video: np.ndarray, cfg: WorldConfig, prompt: Prompt | str | None = None) -> VideoAnalysis:
    """Recover the attributes of a ``(T, H, W, 3)`` video in [0, 1] and measure its quality.

    ``prompt`` is only used to pick the rendered sharpness reference for ``detail``; every
    attribute is recovered from pixels alone.
    """
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video shaped (T, H, W, 3), got {video.shape}")
    video = np.clip(video.astype(np.float32), 0.0, 1.0)
    if isinstance(prompt, str):
        prompt = parse_prompt(prompt)
    frames = video.shape[0]
    saturation = _saturation(video)

    # Colour: the mean colour of the most saturated pixels, nearest palette entry.
    core = saturation > _CORE_SATURATION
    color = None
    if core.sum() > 0:
        mean_rgb = video[core].mean(axis=0)
        color = min(COLORS, key=lambda c: float(np.sum((np.asarray(COLORS[c]) - mean_rgb) ** 2)))
    mask = _object_alpha(saturation, color) if color else np.zeros_like(saturation)
    area = mask.sum(axis=(1, 2))
    expected_area = math.pi * cfg.object_radius**2
    present = (area >= _AREA_RANGE[0] * expected_area) & (area <= _AREA_RANGE[1] * expected_area)
    mask = mask * present[:, None, None]
    if not present.any():
        color = None
    ys, xs = np.mgrid[0 : video.shape[1], 0 : video.shape[2]].astype(np.float32) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask * xs).sum(axis=(1, 2)) / area
        cy = (mask * ys).sum(axis=(1, 2)) / area
    idx = np.flatnonzero(present)

    # Shape: best soft IoU against rendered templates at the measured centroids.
    shape = None
    if idx.size:
        ious = {}
        for name in SHAPES:
            tmpl = shape_coverage(name, cx[idx], cy[idx], cfg)
            m = mask[idx]
            ious[name] = float(np.minimum(m, tmpl).sum() / max(np.maximum(m, tmpl).sum(), 1e-6))
        shape = max(ious, key=ious.get)

    # Motion: a least-squares line through the centroids.
    direction, speed = None, 0.0
    motion_smoothness = 0.0
    if idx.size >= 2:
        vx = float(np.polyfit(idx, cx[idx], 1)[0])
        vy = float(np.polyfit(idx, cy[idx], 1)[0])
        speed = math.hypot(vx, vy)
        direction = max(DIRECTIONS, key=lambda d: DIRECTIONS[d][0] * vx + DIRECTIONS[d][1] * vy)
        consecutive = [i for i in range(1, frames - 1) if present[i - 1] and present[i] and present[i + 1]]
        if consecutive:
            accel = [
                math.hypot(cx[i + 1] - 2 * cx[i] + cx[i - 1], cy[i + 1] - 2 * cy[i] + cy[i - 1])
                for i in consecutive
            ]
            scale = cfg.size / 32.0  # one pixel of a 32px frame
            coverage = len(consecutive) / (frames - 2)
            motion_smoothness = coverage * math.exp(-float(np.mean(accel)) / scale)
    dynamic_degree = float(speed >= 0.5 * cfg.speed_min)

    # Subject consistency: object-centred crops of the masked object, frame to frame.
    subject_consistency = 0.0
    if idx.size >= 2:
        half = int(math.ceil(cfg.extent)) + 1
        crops = _centred_crops((video * mask[..., None])[idx], cx[idx], cy[idx], half)
        subject_consistency = _consistency(list(crops), _cosine) * idx.size / frames

    # Background: pixels away from the object in a frame.
    background_px = _dilate(mask, 2) < 0.01
    gray = video.mean(-1)
    bg_pairs = []
    flicker = []
    for t in range(1, frames):
        both = background_px[t] & background_px[t - 1]
        if both.any():
            flicker.append(float(np.abs(video[t][both] - video[t - 1][both]).mean()))
    temporal_flickering = 1.0 - float(np.mean(flicker)) if flicker else 0.0
    for t in range(frames):
        bg_pairs.append(np.where(background_px[t], gray[t], np.nan))
    common = background_px.all(axis=0)
    if common.sum() >= 16:
        bg_feats = [g[common] for g in bg_pairs]
        background_consistency = _consistency(bg_feats, _correlation)
    else:
        background_consistency = 0.0
    weight = background_px.sum(axis=0).astype(np.float32)
    mean_bg = np.where(weight > 0, np.nansum(np.stack(bg_pairs), axis=0) / np.maximum(weight, 1), 0.0)
    visible = (weight > 0).astype(np.float32)
    if cfg.textures == "random":
        texture, detail = _random_texture(mean_bg, visible, cfg, prompt)
    else:
        texture = _classify_texture(mean_bg, visible, cfg)
        reference = prompt.texture if prompt is not None else texture
        detail = 0.0
        if reference is not None and visible.sum() >= 16:
            ratio = _laplacian_energy(mean_bg, visible) / _reference_detail(reference, cfg)
            detail = min(ratio, 1.0 / ratio) if ratio > 0 else 0.0  # blurred and noisy both fall short

    return VideoAnalysis(
        color=color,
        shape=shape,
        direction=direction,
        texture=texture,
        speed=speed,
        position=(float(cx[idx].mean()), float(cy[idx].mean())) if idx.size else None,
        subject_consistency=subject_consistency,
        background_consistency=background_consistency,
        temporal_flickering=temporal_flickering,
        motion_smoothness=motion_smoothness,
        dynamic_degree=dynamic_degree,
        detail=detail,
    )


def evaluate_video(video: np.ndarray, prompt: Prompt | str, cfg: WorldConfig) -> dict[str, float | str | None]:
    """One row of the per-video table: recovered attributes, raw dimensions, accuracies."""
    if isinstance(prompt, str):
        prompt = parse_prompt(prompt)
    analysis = analyze_video(video, cfg, prompt)
    row: dict[str, float | str | None] = {f"recovered_{k}": v for k, v in asdict(analysis).items()
                                          if k in ("color", "shape", "direction", "texture")}
    row["speed"] = analysis.speed
    row.update(analysis.quality())
    row.update(analysis.semantic(prompt))
    return row


def normalisation_min(dimension: str, world: WorldConfig | None = None) -> float:
    """``Min`` of a dimension; ``world`` picks the detail floor of its textures (None: periodic)."""
    if dimension == "detail" and world is not None and world.textures == "random":
        return RANDOM_TEXTURE_DETAIL_MIN
    return NORMALISATION_MIN[dimension]


def normalise(dimension: str, raw: float, world: WorldConfig | None = None) -> float:
    """``(raw - Min) / (Max - Min)`` clipped to [0, 1]."""
    lo = normalisation_min(dimension, world)
    return float(np.clip((raw - lo) / (NORMALISATION_MAX - lo), 0.0, 1.0))


def aggregate_scores(rows: list[dict], world: WorldConfig) -> dict[str, float]:
    """VBench-style Quality, Semantic and Total over a set of per-video rows of ``world`` (its
    textures decide the detail floor)."""
    if not rows:
        raise ValueError("cannot score an empty set of videos")
    scores: dict[str, float] = {}
    for group, dims in (("quality", QUALITY_DIMENSIONS), ("semantic", SEMANTIC_DIMENSIONS)):
        weighted = 0.0
        for dim, weight in dims.items():
            raw = float(np.mean([r[dim] for r in rows]))
            scores[dim] = raw
            weighted += weight * normalise(dim, raw, world)
        scores[group] = weighted / sum(dims.values())
    scores["total"] = (4 * scores["quality"] + scores["semantic"]) / 5
    return scores


def calibrate_noise_floor(cfg: WorldConfig, videos: int = 16, seed: int = 0) -> dict[str, float]:
    """Raw quality dimensions of uniform-noise videos: the documented ``Min`` of each."""
    rng = np.random.default_rng(seed)
    rows = [analyze_video(rng.random((cfg.frames, cfg.size, cfg.size, 3), dtype=np.float32), cfg,
                          Prompt("red", "circle", "left", "stripes")).quality() for _ in range(videos)]
    return {k: float(np.mean([r[k] for r in rows])) for k in QUALITY_DIMENSIONS}
