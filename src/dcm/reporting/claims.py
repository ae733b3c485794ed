"""The paper's claims, decided with their uncertainty.

Every Total comes with a bootstrap interval: over videos for one run, over seeds and videos where
several seeds of the same configuration are in MLflow (:mod:`dcm.evaluation.uncertainty`). Methods
share prompts and noise, so a comparison resamples the same videos for both sides. The speed claims
use the sample stage's interleaved timing rounds, resampled. A claim reads "yes" or "no" only when
the interval of its margin lies on one side of zero; otherwise "within noise".
"""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd

from dcm.evaluation.uncertainty import (NO, UNDECIDED, YES, bootstrap_totals, decide, interval, score_matrix, totals,
                                        with_interval)
from dcm.world.render import WorldConfig

RESAMPLES = 2000


def per_video_scores(tables: list[pd.DataFrame]) -> dict[str, list[np.ndarray]]:
    """``key -> one score matrix per seed``, videos in (prompt, seed) order, for the keys every table has."""
    keys = set.intersection(*(set(t.key) for t in tables)) if tables else set()
    out = {}
    for key in sorted(keys):
        out[key] = [score_matrix(t[t.key == key].sort_values(["prompt", "seed"]).to_dict("records")) for t in tables]
    return out


class Evidence:
    """Bootstrap distributions of every Total, and the timing rounds, for deciding claims."""

    def __init__(self, scores: dict[str, list[np.ndarray]], world: WorldConfig, latency: dict | None = None):
        self.seeds = len(next(iter(scores.values()))) if scores else 0
        self.videos = len(next(iter(scores.values()))[0]) if scores else 0
        self.means = {key: float(totals(np.concatenate(m).mean(0), world)) for key, m in scores.items()}
        self.boot = bootstrap_totals(scores, world, RESAMPLES) if scores else {}
        self.latency = latency or {}

    def total(self, key: str) -> str:
        """``0.8735 [0.8612, 0.8851]``."""
        return with_interval(self.means[key], self.boot[key])

    def margin(self, samples: np.ndarray, value: float) -> str:
        return with_interval(value, samples, signed=True)

    def ratio_rounds(self, numerator: str, denominator: str, per_step: bool = False) -> np.ndarray | None:
        """Bootstrap distribution (over rounds) of the median per-round time ratio, where both were
        timed in the same interleaved rounds."""
        a, b = self.latency.get(numerator, {}), self.latency.get(denominator, {})
        if not a.get("rounds") or a.get("timed_with") != b.get("timed_with"):
            return None
        ratio = np.asarray(a["rounds"]) / np.asarray(b["rounds"])
        if per_step:
            ratio = ratio * b["steps"] / a["steps"]
        rng = np.random.default_rng(0)
        draws = rng.integers(len(ratio), size=(RESAMPLES, len(ratio)))
        return np.median(ratio[draws], axis=1)


def decide_claims(evidence: Evidence, teacher_key: str) -> list[list[str]]:
    """(claim, measured with its interval, decision) for each of the paper's claims whose methods were
    sampled. Totals are on a 0-1 scale, so the paper's "1 point" is 0.01."""
    rows = []
    boot, means = evidence.boot, evidence.means
    have = lambda *keys: all(k in boot for k in keys)  # noqa: E731
    for k in (4, 8):
        dcm, pcm, lcm = f"dcm@{k}", f"pcm@{k}", f"lcm@{k}"
        if have(dcm, pcm, lcm):
            decisions = [decide(boot[dcm] - boot[pcm]), decide(boot[pcm] - boot[lcm])]
            verdict = NO if NO in decisions else YES if set(decisions) == {YES} else UNDECIDED
            rows.append([f"{k} steps: Total DCM >= PCM >= LCM",
                         f"{means[dcm]:.4f} / {means[pcm]:.4f} / {means[lcm]:.4f}; DCM - PCM "
                         f"{evidence.margin(boot[dcm] - boot[pcm], means[dcm] - means[pcm])}, PCM - LCM "
                         f"{evidence.margin(boot[pcm] - boot[lcm], means[pcm] - means[lcm])}", verdict])
    for k, gap in ((4, 0.02), (2, 0.05)):  # the paper's 4-step parity and its stated 2-step limitation
        dcm = f"dcm@{k}"
        if have(dcm, teacher_key):
            margin = gap - (boot[teacher_key] - boot[dcm])
            rows.append([f"DCM@{k} Total within {gap} of the teacher's ({teacher_key})",
                         f"gap {means[teacher_key] - means[dcm]:+.4f}; margin to {gap}: "
                         f"{evidence.margin(margin, gap - means[teacher_key] + means[dcm])}", decide(margin)])
    for k in (4, 8):
        dcm, undistilled = f"dcm@{k}", f"undistilled@{k}"
        if have(dcm, undistilled):
            rows.append([f"{k} steps: DCM beats the teacher's own {k}-step samples (distillation adds something)",
                         f"DCM - teacher's own {evidence.margin(boot[dcm] - boot[undistilled], means[dcm] - means[undistilled])}",
                         decide(boot[dcm] - boot[undistilled])])
    # the paper's speed-ups (HunyuanVideo 12.4x, one call per step; CogVideoX 23x, CFG) are its cut in
    # transformer calls, less the sampler's overhead
    teacher, dcm4 = evidence.latency.get(teacher_key, {}), evidence.latency.get("dcm@4", {})
    speedups = evidence.ratio_rounds(teacher_key, "dcm@4")
    if speedups is not None and teacher.get("forward_passes") and dcm4.get("forward_passes"):
        ideal = teacher["forward_passes"] / dcm4["forward_passes"]
        measured = statistics.median(np.asarray(teacher["rounds"]) / np.asarray(dcm4["rounds"]))
        lo, hi = interval(speedups)
        rows.append([f"DCM@4 speed-up at least 90% of its cut in transformer calls ({teacher['forward_passes']} -> "
                     f"{dcm4['forward_passes']}: {ideal:.1f}x)", f"{measured:.1f}x [{lo:.1f}, {hi:.1f}]",
                     decide(speedups - 0.9 * ideal)])
    for k in (4, 8):
        ratios = evidence.ratio_rounds(f"dcm@{k}", f"lcm@{k}", per_step=True)
        if ratios is not None:
            lo, hi = interval(ratios)
            rows.append([f"{k} steps: DCM per-step cost within 2% of LCM's (interleaved rounds)",
                         f"{float(np.median(ratios)):.3f}x [{lo:.3f}, {hi:.3f}]", decide(1.02 - ratios)])
    return rows
