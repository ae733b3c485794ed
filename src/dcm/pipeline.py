"""What each DVC stage does, as functions: ``stages/*.py`` and the ``dcm`` CLI both call these.

Every stage reads validated params, opens one MLflow run, and writes its outputs under its
own folder atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dcm.config import Params
from dcm.tracking import stage_run

log = logging.getLogger(__name__)

TEACHER_DIR = Path("artifacts/teacher")


def run_teacher(params: Params, out_dir: Path = TEACHER_DIR) -> Path:
    """Train the tiny teacher (resuming from ``out_dir/checkpoint.pt`` if present)."""
    from dcm.teacher import train_teacher

    with stage_run("teacher", params):
        train_teacher(params, out_dir)
    return out_dir / "model"


TEACHER_REPORT = Path("reports/teacher.md")
TEACHER_REPORT_DIR = Path("reports/teacher")


def run_teacher_eval(params: Params, model_dir: Path = TEACHER_DIR / "model",
                     report: Path = TEACHER_REPORT, report_dir: Path = TEACHER_REPORT_DIR) -> dict[str, float]:
    """Sample the teacher (``flow.steps`` Euler steps, CFG) on held-out seeds, score the
    videos with the toy evaluator, and write the report, grid, mp4s and metrics."""
    import time

    import mlflow
    import pandas as pd

    from dcm.io import write_json, write_manifest, write_mp4
    from dcm.models import load_backbone
    from dcm.plots import frame_grid
    from dcm.teacher import PromptTable, heldout_set, sample_videos
    from dcm.tracking import log_metrics
    from dcm.world.metrics import aggregate_scores, evaluate_video

    backbone = load_backbone(model_dir)
    cfg = params.teacher_eval
    items = heldout_set(cfg.videos, seed=cfg.seed)
    table = PromptTable(backbone)
    steps = params.flow.steps
    with stage_run("teacher_eval", params, {"method": "teacher", "steps": str(steps)}):
        tick = time.perf_counter()
        first = sample_videos(backbone, backbone.transformer, table, items[: cfg.batch_size], params, steps,
                              cfg.guidance_scale, batch_size=cfg.batch_size)
        batch_seconds = time.perf_counter() - tick
        rest = sample_videos(backbone, backbone.transformer, table, items[cfg.batch_size:], params, steps,
                             cfg.guidance_scale, batch_size=cfg.batch_size, progress=True)
        videos = first + rest

        samples = report_dir / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        records, rows = [], []
        for i, (video, (prompt, seed)) in enumerate(zip(videos, items, strict=True)):
            name = f"{i:04d}.mp4"
            write_mp4(samples / name, video)
            records.append({"file": name, "prompt": prompt.text, "seed": seed, "method": "teacher",
                            "steps": steps, "guidance_scale": cfg.guidance_scale})
            rows.append({"file": name, "prompt": prompt.text, "seed": seed,
                         **evaluate_video(video, prompt, params.world.to_config())})
        write_manifest(samples, records)
        frame = pd.DataFrame(rows)
        frame.to_csv(report_dir / "videos.csv", index=False)
        scores = aggregate_scores(rows)
        metrics = {**scores, "batch_seconds": batch_seconds, "batch_size": min(cfg.batch_size, len(items)),
                   "videos": len(items), "steps": steps, "guidance_scale": cfg.guidance_scale}
        write_json(report_dir / "metrics.json", metrics)
        frame_grid([v for v in videos[:8]], [p.text for p, _ in items[:8]], report_dir / "grid.png")
        _write_teacher_report(report, report_dir, metrics, params)
        log_metrics(metrics)
        mlflow.log_artifact(str(report))
        mlflow.log_artifacts(str(report_dir), artifact_path="teacher")
    log.info("teacher: %s", ", ".join(f"{k}={scores[k]:.3f}" for k in ("color", "object_class",
                                                                          "motion_direction", "scene", "total")))
    return metrics


def _write_teacher_report(report: Path, report_dir: Path, m: dict, params: Params) -> None:
    from dcm.io import atomic_write_text

    rel = report_dir.relative_to(report.parent) if report_dir.is_relative_to(report.parent) else report_dir
    lines = [
        "# Tiny teacher: held-out evaluation",
        "",
        f"{m['videos']} videos, {m['steps']}-step Euler sampler with CFG {m['guidance_scale']}, seeds never used "
        "in training. Scored by the toy world's analytic evaluator (`dcm.world.metrics`).",
        "",
        "| attribute | accuracy |",
        "|---|---|",
        *(f"| {k} | {m[k]:.3f} |" for k in ("color", "object_class", "motion_direction", "scene")),
        "",
        "| score | value |",
        "|---|---|",
        *(f"| {k} | {m[k]:.4f} |" for k in ("total", "quality", "semantic", "subject_consistency",
                                             "background_consistency", "temporal_flickering", "motion_smoothness",
                                             "dynamic_degree", "detail")),
        "",
        f"One batch of {m['batch_size']} videos ({m['steps']} steps, CFG, one process on the CPU) took "
        f"{m['batch_seconds']:.1f} s.",
        "",
        f"![frames of the first eight samples]({rel}/grid.png)",
        "",
        f"Videos: `{rel}/samples/` (H.264 mp4, with `manifest.jsonl`); per-video table: `{rel}/videos.csv`.",
        "",
        f"Teacher: {params.model.tiny.num_layers} layers, width "
        f"{params.model.tiny.num_attention_heads * params.model.tiny.attention_head_dim}, patch "
        f"{tuple(params.model.tiny.patch_size)}, {params.teacher.steps} steps of batch {params.teacher.batch_size}.",
        "",
    ]
    atomic_write_text(report, "\n".join(lines))


TRAJECTORY_DIR = Path("artifacts/trajectories")
STUDENT_DIRS = {stage: Path(f"artifacts/{stage}") for stage in ("semantic", "detail", "lcm", "pcm")}


def run_trajectories(params: Params, teacher_dir: Path = TEACHER_DIR / "model", out_dir: Path = TRAJECTORY_DIR) -> Path:
    """Generate the teacher's ODE trajectories (finished shards are kept and skipped)."""
    from dcm.models import load_backbone
    from dcm.trajectories import generate

    backbone = load_backbone(teacher_dir)
    with stage_run("trajectories", params):
        return generate(params, backbone, out_dir)


def run_distill(params: Params, stage: str, teacher_dir: Path = TEACHER_DIR / "model",
                trajectory_dir: Path = TRAJECTORY_DIR, out_dir: Path | None = None) -> dict:
    """Train the student of ``stage`` (semantic, detail, lcm or pcm), resuming from its checkpoint."""
    from dcm.distill.trainer import distill

    a = params.ablation
    tags = {"ablation.od": str(a.od), "ablation.pe": str(a.pe), "ablation.tc": str(a.tc), "ablation.gf": str(a.gf)}
    with stage_run(stage, params, tags):
        return distill(params, stage, out_dir or STUDENT_DIRS[stage], teacher_dir, trajectory_dir,
                       semantic_dir=STUDENT_DIRS["semantic"])
