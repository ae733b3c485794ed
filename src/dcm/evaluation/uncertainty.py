"""Bootstrap intervals for the report's Totals and claims: over videos, and over seeds where there
are several.

Every method is sampled on the same prompts and initial noise, so a resample draws the same videos
(and the same seeds) for every method: differences between methods are paired, and their interval
is much tighter than the two Totals' intervals side by side. A claim is decided only when the
interval of its margin lies on one side of zero; otherwise it is "within noise".
"""

from __future__ import annotations

import numpy as np

from dcm.world.metrics import NORMALISATION_MAX, QUALITY_DIMENSIONS, SEMANTIC_DIMENSIONS, normalisation_min
from dcm.world.render import WorldConfig

DIMENSIONS: tuple[str, ...] = (*QUALITY_DIMENSIONS, *SEMANTIC_DIMENSIONS)
LEVEL = 0.95  # two-sided coverage of every interval in the report
YES, NO, UNDECIDED = "yes", "**no**", "within noise"


def score_matrix(rows: list[dict]) -> np.ndarray:
    """Per-video raw dimensions, ``(videos, dimensions)`` in :data:`DIMENSIONS` order."""
    return np.asarray([[float(r[d]) for d in DIMENSIONS] for r in rows], dtype=np.float64)


def totals(means: np.ndarray, world: WorldConfig | None = None) -> np.ndarray:
    """Total of each row of per-dimension means ``(..., dimensions)`` (VBench's formula, as
    :func:`dcm.world.metrics.aggregate_scores`)."""
    lo = np.asarray([normalisation_min(d, world) for d in DIMENSIONS])
    normalised = np.clip((means - lo) / (NORMALISATION_MAX - lo), 0.0, 1.0)
    group = {}
    for name, dims in (("quality", QUALITY_DIMENSIONS), ("semantic", SEMANTIC_DIMENSIONS)):
        weights = np.asarray([dims[d] if d in dims else 0.0 for d in DIMENSIONS])
        group[name] = (normalised * weights).sum(-1) / weights.sum()
    return (4 * group["quality"] + group["semantic"]) / 5


def bootstrap_means(scores: dict[str, list[np.ndarray]], resamples: int = 2000,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Bootstrap distribution of each method's per-dimension means, ``key -> (resamples, dimensions)``.

    ``scores[key]`` holds one :func:`score_matrix` per seed; every key must have the same seeds and
    the same videos per seed (the same prompts and noise), so one draw of seeds and videos serves all.
    With one seed only the videos are resampled.
    """
    shapes = {key: [m.shape for m in per_seed] for key, per_seed in scores.items()}
    if len({tuple(s) for s in shapes.values()}) != 1:
        raise ValueError(f"methods were scored on different seeds or videos: {shapes}")
    n_seeds, n_videos = len(next(iter(scores.values()))), next(iter(scores.values()))[0].shape[0]
    rng = np.random.default_rng(seed)
    seed_draw = rng.integers(n_seeds, size=(resamples, n_seeds)) if n_seeds > 1 else np.zeros((resamples, 1), int)
    video_draw = rng.integers(n_videos, size=(resamples, n_seeds, n_videos))
    out = {}
    for key, per_seed in scores.items():
        stacked = np.stack(per_seed)  # (seeds, videos, dimensions)
        out[key] = stacked[seed_draw[..., None], video_draw].mean(axis=(1, 2))  # over (resamples, seeds, videos)
    return out


def bootstrap_totals(scores: dict[str, list[np.ndarray]], world: WorldConfig | None = None,
                     resamples: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """Bootstrap distribution of each method's Total, ``key -> (resamples,)``, from the draws of
    :func:`bootstrap_means`."""
    return {key: totals(means, world) for key, means in bootstrap_means(scores, resamples, seed).items()}


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def decide(margin: np.ndarray, level: float = LEVEL) -> str:
    """"yes" when the interval of a claim's margin lies above zero, "no" when below, else "within noise"."""
    lo, hi = interval(margin, level)
    return YES if lo > 0 else NO if hi < 0 else UNDECIDED


def with_interval(value: float, samples: np.ndarray, signed: bool = False, digits: int = 4) -> str:
    """``0.8735 [0.8612, 0.8851]``; ``signed``: ``+0.0058 [+0.0048, +0.0071]`` (a margin or an effect)."""
    lo, hi = interval(samples)
    form = f"{'+' if signed else ''}.{digits}f"
    return f"{value:{form}} [{lo:{form}}, {hi:{form}}]"
