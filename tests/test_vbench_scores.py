"""Specification of dcm.evaluation.vbench_totals: VBench's own aggregation, checked against published scores.

Published numbers are VBench leaderboard rows (huggingface.co/spaces/Vchitect/VBench_Leaderboard)
as reprinted in two papers, in percent with two decimals, 16 dimensions in the leaderboard's
column order (``LEADERBOARD_COLUMNS``):

* [Show-o2] arXiv:2506.15564v3, Table 8, https://arxiv.org/html/2506.15564v3 (header names every
  column: Total, QS, SS, SC, BC, TF, MS, DD, AQ, IQ, OC, MO, HA, C, SR, S, AS, TS, OC').
* [Goku] github.com/Saiyan-World/goku README.md (commit dd61b154), "VBench Performance" table;
  paper arXiv:2502.04896. Its header row is mislabelled (17 names for 19 columns) but the values
  are in the leaderboard order: its Gen-3, Kling, CogVideoX-5B and VideoCrafter-2.0 rows are
  identical, value for value, to the same rows in [Show-o2].
"""

from __future__ import annotations

import json

import pytest

from dcm.evaluation import vbench_totals as vs
from dcm.evaluation.vbench_totals import (
    DIMENSION_WEIGHTS,
    DIMENSIONS,
    NORMALIZATION,
    QUALITY_DIMENSIONS,
    SEMANTIC_DIMENSIONS,
    normalise,
    parse_eval_results,
    vbench_totals,
)

LEADERBOARD_COLUMNS = (
    "subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
    "dynamic_degree", "aesthetic_quality", "imaging_quality", "object_class", "multiple_objects",
    "human_action", "color", "spatial_relationship", "scene", "appearance_style",
    "temporal_style", "overall_consistency",
)  # fmt: skip

# model: (source, (Total, Quality, Semantic), 16 dimensions in LEADERBOARD_COLUMNS order), percent
PUBLISHED = {
    "ModelScope": ("Show-o2", (75.75, 78.05, 66.54), (
        89.87, 95.29, 98.28, 95.79, 66.39, 52.06, 58.57, 82.25,
        38.98, 92.40, 81.72, 33.68, 39.26, 23.39, 25.37, 25.67)),
    "LaVie": ("Show-o2", (77.08, 78.78, 70.31), (
        91.41, 97.47, 98.30, 96.38, 49.72, 54.94, 61.90, 91.82,
        33.32, 96.80, 86.39, 34.09, 52.69, 23.56, 25.93, 26.41)),
    "VideoCrafter-2.0": ("Show-o2", (80.44, 82.20, 73.42), (
        96.85, 98.22, 98.41, 97.73, 42.50, 63.13, 67.22, 92.55,
        40.66, 95.00, 92.92, 35.86, 55.29, 25.13, 25.84, 28.23)),
    "CogVideoX-5B": ("Show-o2", (81.61, 82.75, 77.04), (
        96.23, 96.52, 98.66, 96.92, 70.97, 61.98, 62.90, 85.23,
        62.11, 99.40, 82.81, 66.35, 53.20, 24.91, 25.38, 27.59)),
    "Kling": ("Show-o2", (81.85, 83.39, 75.68), (
        98.33, 97.60, 99.30, 99.40, 46.94, 61.21, 65.62, 87.24,
        68.05, 93.40, 89.90, 73.03, 50.86, 19.62, 24.17, 26.42)),
    "Gen-3": ("Show-o2", (82.32, 84.11, 75.17), (
        97.10, 96.62, 98.61, 99.23, 60.14, 63.34, 66.82, 87.81,
        53.64, 96.40, 80.90, 65.09, 54.57, 24.31, 24.71, 26.69)),
    "HunyuanVideo": ("Goku", (83.24, 85.09, 75.82), (
        97.37, 97.76, 99.44, 98.99, 70.83, 60.36, 67.56, 86.10,
        68.55, 94.40, 91.60, 68.68, 53.88, 19.80, 23.89, 26.44)),
    "Luma": ("Goku", (83.61, 83.47, 84.17), (
        97.33, 97.43, 98.64, 99.35, 44.26, 65.51, 66.55, 94.95,
        82.63, 96.40, 92.33, 83.67, 58.98, 24.66, 26.29, 28.13)),
    "Mira": ("Goku", (71.87, 78.78, 44.21), (
        96.23, 96.92, 98.29, 97.54, 60.33, 42.51, 60.16, 52.06,
        12.52, 63.80, 42.24, 27.83, 16.34, 21.89, 18.77, 18.72)),
}  # fmt: skip

# Percentage points. The published totals are rounded to 0.01 (error <= 0.005) and are computed
# from unrounded dimension scores, whereas we recompute them from dimensions rounded to 0.01.
# That input rounding moves a group score by at most 0.005 * sum(w/(Max-Min)) / sum(w):
# 0.0086 (quality) and 0.0085 (semantic). So |ours - published| <= 0.005 + 0.0086 < 0.015.
TOLERANCE_PP = 0.015


def raw_scores(model: str) -> dict[str, float]:
    """The model's published dimension scores as VBench's raw 0-1 values."""
    return {dim: pct / 100 for dim, pct in zip(LEADERBOARD_COLUMNS, PUBLISHED[model][2])}


def deviation_pp(model: str) -> float:
    """Largest |computed - published| over Total, Quality, Semantic, in percentage points."""
    result = vbench_totals(raw_scores(model))
    computed = (result["total"], result["quality"], result["semantic"])
    return max(abs(100 * c - p) for c, p in zip(computed, PUBLISHED[model][1]))


# --- Published leaderboard scores are reproduced ------------------------------------------------


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_reproduces_published_total_quality_and_semantic_scores(model: str) -> None:
    result = vbench_totals(raw_scores(model))
    total, quality, semantic = PUBLISHED[model][1]
    assert 100 * result["total"] == pytest.approx(total, abs=TOLERANCE_PP)
    assert 100 * result["quality"] == pytest.approx(quality, abs=TOLERANCE_PP)
    assert 100 * result["semantic"] == pytest.approx(semantic, abs=TOLERANCE_PP)
    assert result["partial"] is False
    assert result["missing"] == []
    assert result["covers"] == sorted(DIMENSIONS)


@pytest.mark.parametrize(
    "rule_broken, patch",
    [
        ("dynamic_degree counts fully", {"DIMENSION_WEIGHTS": {d: 1.0 for d in DIMENSIONS}}),
        ("no normalisation", {"NORMALIZATION": {d: (0.0, 1.0) for d in DIMENSIONS}}),
        ("Total a plain mean of the groups", {"QUALITY_WEIGHT": 1.0}),
    ],
)
def test_each_vbench_rule_is_needed_to_reproduce_the_leaderboard(
    rule_broken: str, patch: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the test above: without any one of VBench's rules the published scores are missed."""
    for name, value in patch.items():
        monkeypatch.setattr(vs, name, value)
    assert max(deviation_pp(model) for model in PUBLISHED) > 10 * TOLERANCE_PP, rule_broken


# --- VBench's constants -----------------------------------------------------------------------


def test_dimension_groups_and_weights_are_vbenchs() -> None:
    assert QUALITY_DIMENSIONS == (
        "subject_consistency", "background_consistency", "temporal_flickering",
        "motion_smoothness", "aesthetic_quality", "imaging_quality", "dynamic_degree",
    )  # fmt: skip
    assert len(SEMANTIC_DIMENSIONS) == 9
    assert set(DIMENSIONS) == set(LEADERBOARD_COLUMNS) == set(NORMALIZATION)
    assert DIMENSION_WEIGHTS["dynamic_degree"] == 0.5
    assert sum(DIMENSION_WEIGHTS[d] for d in QUALITY_DIMENSIONS) == 6.5
    assert sum(DIMENSION_WEIGHTS[d] for d in SEMANTIC_DIMENSIONS) == 9
    assert (vs.QUALITY_WEIGHT, vs.SEMANTIC_WEIGHT) == (4, 1)


@pytest.mark.parametrize(
    "dimension, raw, expected",
    [
        ("subject_consistency", 0.1462, 0.0),
        ("subject_consistency", 1.0, 1.0),
        ("subject_consistency", 0.9, (0.9 - 0.1462) / (1.0 - 0.1462)),
        ("motion_smoothness", 0.9975, 1.0),
        ("motion_smoothness", 0.98, (0.98 - 0.706) / (0.9975 - 0.706)),
        ("temporal_flickering", 0.6293, 0.0),
        ("scene", 0.8222, 1.0),
        ("appearance_style", 0.0009, 0.0),
        ("overall_consistency", 0.182, 0.5),
        ("dynamic_degree", 0.42, 0.42),
    ],
)
def test_normalise_uses_vbenchs_min_and_max(dimension: str, raw: float, expected: float) -> None:
    assert normalise(dimension, raw) == pytest.approx(expected, abs=1e-12)


def test_normalise_is_not_clipped_and_accepts_vbenchs_spaced_names() -> None:
    assert normalise("subject_consistency", 0.0) < 0
    assert normalise("overall consistency", 0.364) == pytest.approx(1.0)


# --- Names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: normalise("smoothness", 0.9),
        lambda: vbench_totals({"subject_consistency": 0.9, "smoothness": 0.9}),
        lambda: parse_eval_results({"smoothness": [0.9, []]}),
    ],
)
def test_unknown_dimension_is_rejected_naming_it_and_the_allowed_ones(call) -> None:
    with pytest.raises(ValueError, match="smoothness") as info:
        call()
    assert all(dim in str(info.value) for dim in DIMENSIONS)


def test_same_dimension_under_both_spellings_is_rejected() -> None:
    with pytest.raises(ValueError, match="given twice"):
        vbench_totals({"subject_consistency": 0.9, "subject consistency": 0.9})


# --- Partial sets -----------------------------------------------------------------------------


def test_partial_set_is_labelled_and_averaged_over_the_dimensions_present() -> None:
    raw = {"dynamic_degree": 0.6, "subject_consistency": 0.95, "scene": 0.5}
    result = vbench_totals(raw)

    quality = (normalise("subject_consistency", 0.95) + 0.5 * 0.6) / 1.5
    semantic = 0.5 / 0.8222
    assert result["quality"] == pytest.approx(quality)
    assert result["semantic"] == pytest.approx(semantic)
    assert result["total"] == pytest.approx((4 * quality + semantic) / 5)
    assert result["partial"] is True
    assert result["covers"] == ["dynamic_degree", "scene", "subject_consistency"]
    assert result["missing"] == sorted(set(DIMENSIONS) - set(raw))


def test_total_needs_both_groups() -> None:
    quality_only = vbench_totals({"temporal_flickering": 0.98, "motion_smoothness": 0.99})
    assert quality_only["quality"] is not None
    assert quality_only["semantic"] is None and quality_only["total"] is None
    assert quality_only["partial"] is True
    assert quality_only["covers"] == ["motion_smoothness", "temporal_flickering"]

    empty = vbench_totals({})
    assert (empty["quality"], empty["semantic"], empty["total"]) == (None, None, None)
    assert empty["covers"] == [] and empty["missing"] == sorted(DIMENSIONS)


# --- VBench's *_eval_results.json ------------------------------------------------------------


def test_parse_eval_results_keeps_the_mean_of_each_dimension() -> None:
    # The structure VBench.evaluate() writes: {dimension: [mean_score, per_video_results]}.
    text = json.dumps({
        "temporal_flickering": [0.9731, [
            {"video_path": "a-0.mp4", "video_results": 0.9702},
            {"video_path": "a-1.mp4", "video_results": 0.9760},
        ]],
        "scene": [0.4112, [{"video_path": "b-0.mp4", "video_results": [{"data": 1}]}]],
    })  # fmt: skip
    assert parse_eval_results(json.loads(text)) == {"temporal_flickering": 0.9731, "scene": 0.4112}


def test_parsed_results_of_a_full_run_give_the_published_scores() -> None:
    data = {dim: [score, []] for dim, score in raw_scores("CogVideoX-5B").items()}
    result = vbench_totals(parse_eval_results(data))
    assert 100 * result["total"] == pytest.approx(81.61, abs=TOLERANCE_PP)


@pytest.mark.parametrize("value", [0.97, [], ["0.97", []], {"mean": 0.97}])
def test_parse_eval_results_rejects_other_structures(value) -> None:
    with pytest.raises(ValueError, match="temporal_flickering"):
        parse_eval_results({"temporal_flickering": value})
