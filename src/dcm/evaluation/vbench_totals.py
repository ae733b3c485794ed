"""VBench's Quality, Semantic and Total scores from per-dimension raw scores.

Why this module exists: VBench's headline Total is *not* a plain mean of the 16 raw dimension
scores. Each raw score is first min-max normalised with fixed per-dimension constants (e.g.
``motion_smoothness`` maps [0.706, 0.9975] onto [0, 1], ``appearance_style`` maps
[0.0009, 0.2855]), then weighted (``dynamic_degree`` counts half), averaged within the quality
group and within the semantic group, and the two group scores are combined 4:1. Averaging raw
scores, or forgetting the normalisation, gives numbers that cannot be compared with the VBench
leaderboard.

Every constant is copied from VBench's own code, Vchitect/VBench ``scripts/constant.py``
(commit 45e79ec1, 2026-03; these text-to-video constants are unchanged since commit 592c3a1,
2024-06, "[Update] get final score(t2v)"):

* ``QUALITY_DIMENSIONS`` / ``SEMANTIC_DIMENSIONS``: ``QUALITY_LIST`` / ``SEMANTIC_LIST``, same order;
* ``NORMALIZATION``: ``NORMALIZE_DIC`` (``Min``, ``Max``);
* ``DIMENSION_WEIGHTS``: ``DIM_WEIGHT``;
* ``QUALITY_WEIGHT`` / ``SEMANTIC_WEIGHT``: the constants of the same name.

The arithmetic follows ``scripts/cal_final_score.py`` (``get_nomalized_score``,
``get_quality_score``, ``get_semantic_score``, ``get_final_score``). VBench's file lists name
dimensions with spaces ("subject consistency") while its ``*_eval_results.json`` keys use
underscores ("subject_consistency"); both spellings are accepted here, underscores are returned.

One deliberate difference: ``cal_final_score.py`` scores a dimension missing from a submission
as raw 0, which normalises to a negative number for some dimensions. Here a missing dimension is
left out: each group score is the weighted mean over the group's dimensions that are present
(identical to VBench's when all are present), the result says which dimensions it ``covers`` and
which are ``missing``, and ``partial`` is True whenever any is missing. A partial result is not
comparable to a leaderboard Total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Real
from types import MappingProxyType
from typing import Any

QUALITY_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
)
SEMANTIC_DIMENSIONS: tuple[str, ...] = (
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)
DIMENSIONS: tuple[str, ...] = QUALITY_DIMENSIONS + SEMANTIC_DIMENSIONS

NORMALIZATION: Mapping[str, tuple[float, float]] = MappingProxyType({
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
})
DIMENSION_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {dim: (0.5 if dim == "dynamic_degree" else 1.0) for dim in DIMENSIONS}
)
QUALITY_WEIGHT = 4.0
SEMANTIC_WEIGHT = 1.0


def canonical_dimension(name: str) -> str:
    """VBench's underscore spelling of ``name``; ValueError if it is not a VBench dimension."""
    dim = name.strip().replace(" ", "_")
    if dim not in NORMALIZATION:
        raise ValueError(
            f"unknown VBench dimension {name!r}; expected one of: {', '.join(DIMENSIONS)}"
        )
    return dim


def normalise(dimension: str, raw: float) -> float:
    """``(raw - Min) / (Max - Min)`` with VBench's constants; not clipped, as in VBench."""
    low, high = NORMALIZATION[canonical_dimension(dimension)]
    return (float(raw) - low) / (high - low)


def parse_eval_results(data: Mapping[str, Any]) -> dict[str, float]:
    """Dimension -> raw mean score from the dict loaded from VBench's ``*_eval_results.json``.

    VBench writes each dimension as ``[mean_score, per_video_results]``; only the mean is kept
    (as ``cal_final_score.py`` does with ``cur_json[key][0]``).
    """
    scores: dict[str, float] = {}
    for key, value in data.items():
        dim = canonical_dimension(key)
        if not (isinstance(value, (list, tuple)) and value and isinstance(value[0], Real)):
            raise ValueError(
                f"{key!r}: expected VBench's [mean_score, per_video_results], got {value!r:.80}"
            )
        scores[dim] = float(value[0])
    return scores


def _group_score(dims: Iterable[str], scores: Mapping[str, float]) -> float | None:
    present = [d for d in dims if d in scores]
    if not present:
        return None
    weighted = sum(DIMENSION_WEIGHTS[d] * normalise(d, scores[d]) for d in present)
    return weighted / sum(DIMENSION_WEIGHTS[d] for d in present)


def vbench_totals(raw: Mapping[str, float]) -> dict[str, Any]:
    """VBench's ``quality``, ``semantic`` and ``total`` (0-1 scale) from raw 0-1 dimension scores.

    A group with no dimension present scores None; ``total`` is given only when both groups
    have at least one dimension. ``covers``/``missing`` are sorted dimension names and
    ``partial`` is True unless all 16 dimensions are present.
    """
    scores: dict[str, float] = {}
    for name, value in raw.items():
        dim = canonical_dimension(name)
        if dim in scores:
            raise ValueError(f"dimension {dim!r} given twice (as {name!r} and another spelling)")
        scores[dim] = float(value)
    quality = _group_score(QUALITY_DIMENSIONS, scores)
    semantic = _group_score(SEMANTIC_DIMENSIONS, scores)
    total = (
        None
        if quality is None or semantic is None
        else (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic)
        / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    )
    missing = sorted(set(DIMENSIONS) - scores.keys())
    return {
        "quality": quality,
        "semantic": semantic,
        "total": total,
        "covers": sorted(scores),
        "missing": missing,
        "partial": bool(missing),
    }
