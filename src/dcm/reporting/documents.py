"""The Markdown documents dcm writes: the teacher's report, the pipeline's report, the ablation
comparison. Each is assembled from :mod:`.tables` and points at figures from :mod:`.figures`."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dcm.config import Params
from dcm.io import atomic_write_text
from dcm.reporting.tables import (ablation_table, few_step_failure_table, fmt, methods_over_seeds, methods_table,
                                  sources_table, table)

PAPER_TABLE_3 = ("Paper (HunyuanVideo, 4 steps, VBench Total %): none 80.30; OD 83.08; OD+PE 83.03; "
                 "OD+PE+TC 83.42; OD+PE+GF 83.71; all four 83.80.")


def relative(path: Path, document: Path) -> str:
    return os.path.relpath(path, document.parent)


def teacher_report(report: Path, report_dir: Path, m: dict, probe: list[dict], swap: list[dict],
                   ideal: dict[str, float], params: Params) -> None:
    """``reports/teacher.md``: sampled accuracy, the two probes, scores, timing, the frame grid."""
    rel = relative(report_dir, report)
    lines = ["# Teacher: held-out evaluation", "",
             f"{m['videos']} videos, {m['steps']}-step Euler sampler with CFG {m['guidance_scale']}, seeds never used "
             "in training or for choosing anything.", ""]
    if params.model.toy_world:
        lines += ["Scored by the toy world's analytic evaluator (`dcm.world.metrics`).", "",
                  table([[k, f"{m[k]:.3f}"] for k in ("color", "object_class", "motion_direction", "scene")],
                        ["attribute", "accuracy"]), ""]
        lines += _denoising_section(probe, rel) + _swap_section(swap, ideal)
        lines += [table([[k, f"{m[k]:.4f}"] for k in ("total", "quality", "semantic", "subject_consistency",
                                                        "background_consistency", "temporal_flickering",
                                                        "motion_smoothness", "dynamic_degree", "detail")],
                        ["score", "value"]), ""]
    else:
        lines += [f"Backbone `{params.model.backbone}` from `{params.model.path}`: the toy world's evaluator does "
                  "not apply; the `evaluate` stage scores these models with VBench.", ""]
    lines += [f"One batch of {m['batch_size']} videos ({m['steps']} steps, CFG, one process) took "
              f"{m['batch_seconds']:.1f} s.", "",
              f"![frames of the first eight samples]({rel}/grid.png)", "",
              f"Videos: `{rel}/samples/` (H.264 mp4, with `manifest.jsonl`); per-video table: `{rel}/videos.csv`.", ""]
    if params.model.toy_world:
        t = params.model.tiny
        lines += [f"Teacher: {t.num_layers} layers, width {t.num_attention_heads * t.attention_head_dim}, patch "
                  f"{tuple(t.patch_size)}, coordinate channels {'on' if t.coordinate_channels else 'off'}, "
                  f"{t.prediction} prediction; {params.teacher.steps} steps of batch {params.teacher.batch_size}.", ""]
    atomic_write_text(report, "\n".join(lines))


def _denoising_section(probe: list[dict], rel: str) -> list[str]:
    if not probe:
        return []
    keys = [k for k in probe[0] if k.startswith("acc_")]
    rows = [[f"{r['sigma']:.2f}", *(f"{r[k]:.2f}" for k in keys)] for r in probe]
    return ["One-step denoising of the same held-out videos: the ground truth noised to sigma, then",
            "`x0 = x_sigma - sigma * v` with the same guidance. Up to the noise level where a column stays",
            "high, the teacher reads that attribute out of the video; above it, sampling from noise has to",
            "decide the attribute itself.", "",
            table(rows, ["sigma", *(k.removeprefix("acc_") for k in keys)]), "",
            f"![accuracy of one-step denoising by noise level]({rel}/denoising.png)", ""]


def _swap_section(swap: list[dict], ideal: dict[str, float]) -> list[str]:
    if not swap:
        return []
    words = [k for k in swap[0] if k != "sigma"]
    rows = [[f"{r['sigma']:.2f}", *(f"{r[w]:.4f}" for w in words)] for r in swap]
    rows.append(["exact model, sigma 1", *(fmt(ideal.get(w)) for w in words)])
    return ["What the teacher listens to: the same noised videos, one-step estimate `x0` under the prompt",
            "and under the prompt with one word swapped (colour, shape, direction or texture to the next",
            "value); mean |change| of `x0` (pixels in [-1, 1], no guidance). A word the teacher ignores moves",
            "nothing. The last row is what an exact model moves at sigma 1, where its estimate is the",
            "conditional mean over every layout the prompt allows.", "",
            table(rows, ["sigma", *words]), ""]


def pipeline_report(metrics: dict[str, dict], teacher_key: str, runs: pd.DataFrame, figures: list[str],
                    params: Params, claims: list[list[str]], claims_basis: str,
                    intervals: dict[str, str] | None, calls: dict[str, tuple[int, int]],
                    ablations: list[str]) -> str:
    """``reports/report.md``: Table 1 over seeds (with the Totals' ``intervals`` over seeds and videos,
    where there are several seeds) and for this run, the paper's ``claims`` decided with their
    intervals (:mod:`dcm.reporting.claims`, on ``claims_basis``), the training sources compared where both
    have runs (``calls``: each one's teacher calls), Table 3 over seeds with each part's effect
    (``ablations``: :func:`dcm.reporting.ablations.ablation_section`), the figures."""
    from dcm.tracking import config_tags

    videos = next(iter(metrics.values()), {}).get("videos", "–")
    lines = ["# DCM on the embedded toy world", "",
             "Generated by the `report` stage from `reports/metrics.json`, the stage folders under "
             "`artifacts/` and the MLflow runs. Scores are the toy world's analytic VBench-style scores "
             "(0-1; `dcm.world.metrics`), each Total with a 95% bootstrap interval; latency is the median "
             "per-video time in one CPU process over interleaved rounds. `dcm grid seeds` adds seeds to the "
             "tables below.", "",
             "## Methods over seeds (paper Table 1 analog)", "",
             methods_over_seeds(runs, config_tags(params)["dcm.config"], intervals), "",
             f"## Methods, this run (distill.seed = {params.distill.seed}, {videos} videos each)", "",
             methods_table(metrics, teacher_key), ""]
    failure = few_step_failure_table(metrics, teacher_key)
    if failure:
        lines += ["## What few steps lose before any distillation", "",
                  "The teacher's own Euler samples at each student step count (`undistilled`) against its full "
                  "schedule, on the same prompts and noise: what a few-step student has to win back.", "",
                  failure, ""]
    if claims:
        lines += [f"## The paper's claims, decided {claims_basis}", "",
                  "A claim reads yes or no only when the 95% bootstrap interval of its margin lies on one side "
                  "of zero, and within noise otherwise; comparisons resample the same videos for both methods "
                  "(they share prompts and noise), speed claims resample the interleaved timing rounds.", "",
                  table(claims, ["claim", "measured [95% interval]", "holds"]), ""]
    sources = sources_table(runs, calls, params.boundary)
    if sources:
        lines += ["## Training points: teacher trajectories or noised dataset videos", "",
                  "Full DCM learning from each `distill.source` (same student steps; learning rates chosen on the "
                  "validation split), and the teacher transformer calls each costs before and during "
                  "distillation (`docs/data-and-validation.md`).", "", sources, ""]
    lines += ["## Ablations (paper Table 3 analog)", "",
              f"These params (boundary {params.boundary}) with each row's switches; each Total is the mean ± sd over "
              f"the newest run of each seed, then its 95% interval over seeds and videos; a row without runs is left "
              f"out (`dcm grid ablations --seeds 0,1,2` runs all six). {PAPER_TABLE_3}", "",
              *ablations, "## Figures", ""]
    return "\n".join(lines + figures)


def ablation_report(frame: pd.DataFrame) -> str:
    """``reports/ablation.md`` (``dcm compare``): Table 3 over every experiment found."""
    return "\n".join(["# Ablations (paper Table 3 analog)", "",
                      "DCM's toy-world Total per ablation setting: the newest DVC experiment of each seed at the "
                      f"setting's most common boundary, mean ± sd over seeds. {PAPER_TABLE_3}", "",
                      ablation_table(frame), ""])
