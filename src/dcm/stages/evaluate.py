"""Stage ``evaluate``: score every sample folder (toy world, fidelity to the teacher, VBench)."""

from __future__ import annotations

import json
import logging

import numpy as np

from dcm.config import Params, sample_plan
from dcm.errors import MissingInputError, SampleFolderError
from dcm.layout import LATENCY, Layout
from dcm.tracking import stage_run

log = logging.getLogger(__name__)


def read_sample_folders(params: Params, layout: Layout) -> tuple[dict[str, list[dict]], dict]:
    """Every planned folder's manifest and the latency table, checked before any scoring."""
    from dcm.io import read_manifest

    latency_path = layout.samples / LATENCY
    if not latency_path.exists():
        raise MissingInputError(f"{latency_path} is missing: run the sample stage first (`dvc repro sample`)")
    manifests = {}
    for method, steps in sample_plan(params):
        key = f"{method}@{steps}"
        manifests[key] = read_manifest(layout.samples / key)
        wrong = [r["file"] for r in manifests[key] if r["method"] != method or int(r["steps"]) != steps]
        if wrong:
            raise SampleFolderError(f"{layout.samples / key} holds videos of another method or step count: "
                                    f"{wrong[:3]}; rerun `dvc repro sample`")
    return manifests, json.loads(latency_path.read_text())


def score_folder(key: str, records: list[dict], params: Params, layout: Layout, teacher: dict,
                 vbench_dims: list[str], vbench_mode: str) -> list[dict]:
    """One row per video: toy-world scores, PSNR/SSIM against the teacher's video, VBench."""
    from dcm.evaluation.fidelity import psnr, ssim
    from dcm.evaluation.vbench_runner import run_vbench
    from dcm.io import read_mp4
    from dcm.world.metrics import evaluate_video

    world = params.world.to_config()
    vb = run_vbench(layout.samples / key, [r["file"] for r in records], vbench_dims, vbench_mode) if vbench_dims else {}
    rows = []
    for r in records:
        video = read_mp4(layout.samples / key / r["file"])
        row = {"key": key, "method": r["method"], "steps": r["steps"], "file": r["file"], "prompt": r["prompt"],
               "seed": r["seed"], **(evaluate_video(video, r["prompt"], world) if params.model.toy_world else {})}
        ref = teacher.get((r["prompt"], r["seed"]))
        if ref is not None:
            row["psnr_vs_teacher"], row["ssim_vs_teacher"] = psnr(video, ref), ssim(video, ref)
        for dim, scores in vb.items():
            row[f"vbench_{dim}"] = scores.get(r["file"], float("nan"))
        rows.append(row)
    return rows


def summarise(rows: list[dict], key: str, latency: dict, params: Params, teacher_key: str,
              missing: dict[str, list[str]]) -> dict:
    """A folder's entry in ``reports/metrics.json``."""
    from dcm.evaluation.vbench_runner import vbench_scores
    from dcm.evaluation.uncertainty import bootstrap_totals, interval, score_matrix
    from dcm.world.metrics import aggregate_scores

    world = params.world.to_config()
    entry = {**(aggregate_scores(rows, world) if params.model.toy_world else {}),
             **{k: v for k, v in latency.get(key, {}).items() if k != "rounds"}, "videos": len(rows)}
    if params.model.toy_world:
        boot = bootstrap_totals({key: [score_matrix(rows)]}, world)[key]
        entry["total_interval"] = list(interval(boot))
    if teacher_key in latency and key in latency:
        entry["speedup_vs_teacher"] = speedup(latency[teacher_key], latency[key])
    if "psnr_vs_teacher" in rows[0]:
        entry["psnr_vs_teacher"] = float(np.mean([r["psnr_vs_teacher"] for r in rows]))
        entry["ssim_vs_teacher"] = float(np.mean([r["ssim_vs_teacher"] for r in rows]))
    vbench = {c.removeprefix("vbench_"): float(np.nanmean([r[c] for r in rows])) for c in rows[0]
              if c.startswith("vbench_")}
    if vbench:
        entry.update({f"vbench_{d}": v for d, v in vbench.items()})
        entry.update(vbench_scores(vbench))
    if missing:
        entry["vbench_missing"] = {dim: reasons for dim, reasons in sorted(missing.items())}
    return entry


def speedup(slow: dict, fast: dict) -> float:
    """How many times faster ``fast`` samples than ``slow``: the median of per-round ratios where both
    were timed in the same interleaved rounds, else the ratio of their medians."""
    import statistics

    if slow.get("timed_with") == fast.get("timed_with") and "rounds" in slow and "rounds" in fast:
        return statistics.median(a / b for a, b in zip(slow["rounds"], fast["rounds"], strict=True))
    return slow["latency_s"] / fast["latency_s"]


def run_evaluate(params: Params, layout: Layout = Layout()) -> dict:
    """Score every sample folder; write ``reports/metrics.json`` and the per-video table."""
    import mlflow
    import pandas as pd

    from dcm.evaluation.vbench_runner import vbench_plan
    from dcm.io import read_mp4, write_json
    from dcm.tracking import log_headline, log_metrics

    manifests, latency = read_sample_folders(params, layout)
    teacher_key = f"teacher@{params.flow.steps}"
    teacher = {(r["prompt"], r["seed"]): read_mp4(layout.samples / teacher_key / r["file"])
               for r in manifests.get(teacher_key, [])}
    mode, present, missing = vbench_plan(params.sample.prompt_file) if params.evaluate.vbench else ("", [], {})
    for dim, needs in missing.items():
        log.warning("VBench %s not scored: it needs %s", dim, "; ".join(needs))
    results, rows = {}, []
    with stage_run("evaluate", params):
        for key, records in manifests.items():
            key_rows = score_folder(key, records, params, layout, teacher, present, mode)
            results[key] = entry = summarise(key_rows, key, latency, params, teacher_key, missing)
            rows.extend(key_rows)
            log_metrics({f"{key}/{k}": v for k, v in entry.items()})
            log_headline({f"{key}/{k}": entry[k] for k in ("total", "quality", "semantic", "latency_s",
                                                         "psnr_vs_teacher") if k in entry})
        layout.evaluation.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(layout.evaluation / "videos.csv", index=False)
        write_json(layout.metrics, results)
        mlflow.log_artifact(str(layout.evaluation / "videos.csv"))
        mlflow.log_artifact(str(layout.metrics))
    return results
