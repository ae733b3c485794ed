"""Per-video scores and their aggregates for a set of sampled videos (toy world).

Every place that samples, decodes and scores (the trainer's validation curve, the teacher's checks
and probes, the studies) hands its decoded videos here: each is scored against its prompt by the
toy world's analytic evaluator (:func:`dcm.world.metrics.evaluate_video`), and the set is
aggregated the VBench way (:func:`dcm.world.metrics.aggregate_scores`: each dimension's mean over
the videos, normalised and weighted into Quality, Semantic and Total).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dcm.world.grammar import Prompt
from dcm.world.metrics import aggregate_scores, evaluate_video
from dcm.world.render import WorldConfig


@dataclass(frozen=True)
class SampleScores:
    """``rows``: one per video, its prompt and seed, then what the evaluator recovered (attributes,
    raw quality dimensions, 0/1 prompt accuracies); ``aggregate``: each dimension's mean over the
    videos, and Quality, Semantic and Total."""

    rows: list[dict[str, float | int | str | None]]
    aggregate: dict[str, float]


def score_samples(videos: Sequence[np.ndarray], items: Sequence[tuple[Prompt | str, int]],
                  world: WorldConfig) -> SampleScores:
    """Score ``videos`` (``(T, H, W, 3)`` in [0, 1], as :func:`dcm.world.render.to_video` decodes
    them), each against the ``(prompt, seed)`` it was sampled from, at the same position."""
    if len(videos) != len(items):
        raise ValueError(f"{len(videos)} videos for {len(items)} (prompt, seed) pairs: each video is scored "
                         "against the prompt it was sampled from")
    rows = [{"prompt": str(prompt), "seed": seed, **evaluate_video(video, prompt, world)}
            for video, (prompt, seed) in zip(videos, items, strict=True)]
    return SampleScores(rows, aggregate_scores(rows, world))
