"""Bootstrap intervals of the report: Totals match the evaluator's, intervals shrink with more
videos, paired comparisons see a small consistent gain that unpaired intervals would hide."""

import numpy as np
import pytest

from dcm.evaluation.uncertainty import (
    DIMENSIONS,
    NO,
    UNDECIDED,
    YES,
    bootstrap_totals,
    decide,
    interval,
    score_matrix,
    totals,
)
from dcm.world import all_prompts, render_video
from dcm.world.metrics import aggregate_scores, evaluate_video


@pytest.fixture(scope="module")
def truth_rows():
    from dcm.config import Params

    world = Params().world.to_config()
    return [evaluate_video(render_video(p, 100 + i, world), p, world) for i, p in enumerate(all_prompts()[:24])]


def test_total_of_the_means_is_the_evaluators_total(world, truth_rows):
    matrix = score_matrix(truth_rows)
    assert totals(matrix.mean(0), world) == pytest.approx(aggregate_scores(truth_rows, world)["total"], abs=1e-12)


def _noisy(matrix: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Per-video scores pulled down by a random amount (a worse method, video by video)."""
    rng = np.random.default_rng(seed)
    return np.clip(matrix - rng.uniform(0, scale, matrix.shape), 0, 1)


def test_interval_covers_the_total_and_narrows_with_more_videos(world, truth_rows):
    base = _noisy(score_matrix(truth_rows), 0.4, 0)
    few = bootstrap_totals({"m": [base[:8]]}, world)["m"]
    many = bootstrap_totals({"m": [np.concatenate([base] * 4)]}, world)["m"]
    total = totals(base.mean(0), world)
    lo, hi = interval(many)
    assert lo <= total <= hi
    assert hi - lo < np.subtract(*interval(few)[::-1])


def test_paired_difference_is_decided_where_unpaired_intervals_overlap(world, truth_rows):
    """B is A plus a small gain on every video: the Totals' intervals overlap, the paired margin does not."""
    a = _noisy(score_matrix(truth_rows), 0.6, 1)
    b = np.clip(a + 0.01, 0, 1)
    boot = bootstrap_totals({"a": [a], "b": [b]}, world)
    (a_lo, a_hi), (b_lo, b_hi) = interval(boot["a"]), interval(boot["b"])
    assert b_lo < a_hi  # unpaired: overlapping
    assert decide(boot["b"] - boot["a"]) == YES
    assert decide(boot["a"] - boot["b"]) == NO


def test_identical_methods_are_within_noise_not_decided(world, truth_rows):
    a = _noisy(score_matrix(truth_rows), 0.6, 2)
    shuffled = a[np.random.default_rng(3).permutation(len(a))]  # same scores, other videos
    boot = bootstrap_totals({"a": [a], "b": [shuffled]}, world)
    assert decide(boot["a"] - boot["b"]) == UNDECIDED


def test_seeds_widen_the_interval_when_they_disagree(world, truth_rows):
    a = _noisy(score_matrix(truth_rows), 0.4, 4)
    same = bootstrap_totals({"m": [a, a, a]}, world)["m"]
    apart = bootstrap_totals({"m": [a, np.clip(a - 0.1, 0, 1), np.clip(a + 0.1, 0, 1)]}, world)["m"]
    width = lambda s: np.subtract(*interval(s)[::-1])  # noqa: E731
    assert width(apart) > 2 * width(same)


def test_methods_scored_on_other_videos_are_refused(world, truth_rows):
    a = score_matrix(truth_rows)
    with pytest.raises(ValueError, match="different seeds or videos"):
        bootstrap_totals({"a": [a], "b": [a[:10]]}, world)


def test_dimensions_are_the_evaluators():
    from dcm.world.metrics import QUALITY_DIMENSIONS, SEMANTIC_DIMENSIONS

    assert set(DIMENSIONS) == set(QUALITY_DIMENSIONS) | set(SEMANTIC_DIMENSIONS)
