"""What each DVC stage does, as functions: ``stages/*.py`` and the ``dcm`` CLI both call these.

Every stage reads validated params, opens one MLflow run, and writes its outputs under its
own folder atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from dcm.config import Params
from dcm.tracking import stage_run

log = logging.getLogger(__name__)

TEACHER_DIR = Path("artifacts/teacher")


def run_teacher(params: Params, out_dir: Path = TEACHER_DIR) -> Path:
    """Train the tiny teacher (resuming from ``out_dir/checkpoint.pt`` if present), or, for a
    real backbone, check ``model.path`` and point ``out_dir/model`` at it."""
    if params.model.backbone != "tiny":
        from dcm.models import backbone_class, write_backbone_link

        m = params.model
        backbone_class(m.backbone).check(m.path)
        write_backbone_link(out_dir / "model", m.backbone, m.path, **m.backbone_options())
        return out_dir / "model"
    from dcm.teacher import train_teacher

    with stage_run("teacher", params):
        train_teacher(params, out_dir)
    return out_dir / "model"


TEACHER_REPORT = Path("reports/teacher.md")
TEACHER_REPORT_DIR = Path("reports/teacher")


def run_teacher_eval(params: Params, model_dir: Path = TEACHER_DIR / "model",
                     report: Path = TEACHER_REPORT, report_dir: Path = TEACHER_REPORT_DIR) -> dict[str, float]:
    """Sample the teacher (``flow.steps`` Euler steps, CFG) on held-out seeds and write the
    report, grid, mp4s and metrics. The tiny teacher's videos are scored by the toy world's
    evaluator; a real backbone's are not (its prompts come from ``sample.prompt_file``)."""
    import time

    import mlflow
    import pandas as pd
    import torch

    from dcm.io import write_json, write_manifest, write_mp4
    from dcm.models import load_backbone
    from dcm.plots import accuracy_by_noise, frame_grid
    from dcm.prompts import heldout_prompts
    from dcm.students import Generator, sample
    from dcm.teacher import ACCURACY_KEYS, denoising_accuracy
    from dcm.tracking import log_metrics
    from dcm.trajectories import latent_shape
    from dcm.world.grammar import parse_prompt
    from dcm.world.metrics import aggregate_scores, evaluate_video
    from dcm.world.render import to_video

    cfg = params.teacher_eval
    toy = params.model.backbone == "tiny"
    prompts, seeds = heldout_prompts(None if toy else params.sample.prompt_file, cfg.videos, cfg.seed)
    backbone = load_backbone(model_dir)
    steps = params.flow.steps
    grid = backbone.sigma_grid(steps, params.flow.shift)
    teacher = Generator("teacher", steps, grid.flip(0).tolist(), cfg.guidance_scale, backbone.transformer)
    shape = latent_shape(params, backbone)
    with stage_run("teacher_eval", params, {"method": "teacher", "steps": str(steps)}):
        tick = time.perf_counter()
        latents = [sample(teacher, backbone, prompts[: cfg.batch_size], seeds[: cfg.batch_size], shape, cfg.batch_size)]
        batch_seconds = time.perf_counter() - tick
        if len(prompts) > cfg.batch_size:
            latents.append(sample(teacher, backbone, prompts[cfg.batch_size:], seeds[cfg.batch_size:], shape,
                                  cfg.batch_size, progress=True))
        videos = [to_video(backbone.decode_latents(x[None])[0]) for x in torch.cat(latents)]

        samples = report_dir / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        records, rows = [], []
        for i, (video, prompt, seed) in enumerate(zip(videos, prompts, seeds, strict=True)):
            name = f"{i:04d}.mp4"
            write_mp4(samples / name, video)
            records.append({"file": name, "prompt": prompt, "seed": seed, "method": "teacher",
                            "steps": steps, "guidance_scale": cfg.guidance_scale})
            scores = evaluate_video(video, prompt, params.world.to_config()) if toy else {}
            rows.append({"file": name, "prompt": prompt, "seed": seed, **scores})
        write_manifest(samples, records)
        pd.DataFrame(rows).to_csv(report_dir / "videos.csv", index=False)
        metrics = {**(aggregate_scores(rows) if toy else {}), "batch_seconds": batch_seconds,
                   "batch_size": min(cfg.batch_size, len(prompts)), "videos": len(prompts), "steps": steps,
                   "guidance_scale": cfg.guidance_scale}
        write_json(report_dir / "metrics.json", metrics)
        frame_grid(videos[:8], prompts[:8], report_dir / "grid.png")
        probe = []
        if toy and cfg.probe_sigmas:
            probe = denoising_accuracy(backbone, backbone.transformer, [(parse_prompt(p), s) for p, s in
                                                                        zip(prompts, seeds, strict=True)],
                                       params, cfg.probe_sigmas, cfg.guidance_scale, cfg.batch_size)
            pd.DataFrame(probe).to_csv(report_dir / "denoising.csv", index=False)
            accuracy_by_noise(probe, {k: metrics[k] for k in ACCURACY_KEYS}, report_dir / "denoising.png")
        _write_teacher_report(report, report_dir, metrics, probe, params)
        log_metrics(metrics)
        mlflow.log_artifact(str(report))
        mlflow.log_artifacts(str(report_dir), artifact_path="teacher")
    if toy:
        log.info("teacher: %s", ", ".join(f"{k}={metrics[k]:.3f}" for k in ("color", "object_class",
                                                                             "motion_direction", "scene", "total")))
    return metrics


def _write_teacher_report(report: Path, report_dir: Path, m: dict, probe: list[dict], params: Params) -> None:
    from dcm.io import atomic_write_text

    rel = report_dir.relative_to(report.parent) if report_dir.is_relative_to(report.parent) else report_dir
    toy = params.model.backbone == "tiny"
    lines = [
        "# Teacher: held-out evaluation",
        "",
        f"{m['videos']} videos, {m['steps']}-step Euler sampler with CFG {m['guidance_scale']}, seeds never used "
        "in training.",
        "",
    ]
    if toy:
        lines += [
            "Scored by the toy world's analytic evaluator (`dcm.world.metrics`).",
            "",
            "| attribute | accuracy |",
            "|---|---|",
            *(f"| {k} | {m[k]:.3f} |" for k in ("color", "object_class", "motion_direction", "scene")),
            "",
            *_probe_section(probe, rel),
            "| score | value |",
            "|---|---|",
            *(f"| {k} | {m[k]:.4f} |" for k in ("total", "quality", "semantic", "subject_consistency",
                                                 "background_consistency", "temporal_flickering",
                                                 "motion_smoothness", "dynamic_degree", "detail")),
            "",
        ]
    else:
        lines += [f"Backbone `{params.model.backbone}` from `{params.model.path}`: the toy world's evaluator does "
                  "not apply; the `evaluate` stage scores these models with VBench.", ""]
    lines += [
        f"One batch of {m['batch_size']} videos ({m['steps']} steps, CFG, one process) took "
        f"{m['batch_seconds']:.1f} s.",
        "",
        f"![frames of the first eight samples]({rel}/grid.png)",
        "",
        f"Videos: `{rel}/samples/` (H.264 mp4, with `manifest.jsonl`); per-video table: `{rel}/videos.csv`.",
        "",
    ]
    if toy:
        t = params.model.tiny
        lines += [f"Teacher: {t.num_layers} layers, width {t.num_attention_heads * t.attention_head_dim}, patch "
                  f"{tuple(t.patch_size)}, {params.teacher.steps} steps of batch {params.teacher.batch_size}.", ""]
    atomic_write_text(report, "\n".join(lines))


def _probe_section(probe: list[dict], rel: Path) -> list[str]:
    if not probe:
        return []
    keys = [k for k in probe[0] if k.startswith("acc_")]
    return [
        "One-step denoising of the same held-out videos: the ground truth noised to sigma, then",
        "`x0 = x_sigma - sigma * v` with the same guidance. Up to the noise level where a column stays",
        "high, the teacher reads that attribute out of the video; above it, sampling from noise has to",
        "decide the attribute itself.",
        "",
        "| sigma | " + " | ".join(k.removeprefix("acc_") for k in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
        *(f"| {r['sigma']:.2f} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |" for r in probe),
        "",
        f"![accuracy of one-step denoising by noise level]({rel}/denoising.png)",
        "",
    ]


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

    with stage_run(stage, params):
        return distill(params, stage, out_dir or STUDENT_DIRS[stage], teacher_dir, trajectory_dir,
                       semantic_dir=STUDENT_DIRS["semantic"])


SAMPLE_DIR = Path("artifacts/samples")
METRICS = Path("reports/metrics.json")
EVAL_DIR = Path("reports/evaluation")


def sample_plan(params: Params) -> list[tuple[str, int]]:
    """(method, steps) pairs the sample stage produces: the teacher once at flow.steps."""
    plan = []
    for method in params.sample.methods:
        plan.extend([(method, params.flow.steps)] if method == "teacher" else [(method, k) for k in params.sample.steps])
    return plan


def run_sample(params: Params, teacher_dir: Path = TEACHER_DIR / "model", artifacts: Path = Path("artifacts"),
               out_dir: Path = SAMPLE_DIR) -> dict:
    """Sample every method on the same held-out prompts and initial noise; time each one."""
    import dataclasses
    import statistics
    import time

    from dcm.io import write_json, write_manifest, write_mp4
    from dcm.models import load_backbone
    from dcm.prompts import sample_prompts
    from dcm.students import check_method, load_generator, method_sigmas, sample
    from dcm.trajectories import latent_shape
    from dcm.tracking import log_metrics
    from dcm.world.render import to_video

    s = params.sample
    prompts, seeds = sample_prompts(params)
    backbone = load_backbone(teacher_dir)
    plan = sample_plan(params)
    # every schedule and every file is checked before any sampling starts ...
    schedules = {(m, k): method_sigmas(m, k, backbone, params) for m, k in plan}
    for method in params.sample.methods:
        check_method(method, artifacts)
    shape = latent_shape(params, backbone)
    latency = {}
    with stage_run("sample", params):
        loaded = None  # ... and one method's models are in memory at a time
        for (method, steps), sigmas in schedules.items():
            if loaded is None or loaded.method != method:
                loaded = None  # release the previous method's models before loading the next
                loaded = load_generator(method, steps, backbone, params, artifacts)
            gen = dataclasses.replace(loaded, steps=steps, sigmas=sigmas)
            key = f"{method}@{steps}"
            target = out_dir / key
            latents = sample(gen, backbone, prompts, seeds, shape, s.batch_size)
            records = []
            for i, (latent, prompt, seed) in enumerate(zip(latents, prompts, seeds, strict=True)):
                name = f"{i:04d}.mp4"
                write_mp4(target / name, to_video(backbone.decode_latents(latent[None])[0]))
                records.append({"file": name, "prompt": prompt, "seed": seed, "method": method, "steps": steps,
                                "guidance_scale": gen.guidance_scale})
            write_manifest(target, records)  # last: a folder with a manifest is complete
            batch_p, batch_s = prompts[:s.latency_batch], seeds[:s.latency_batch]
            sample(gen, backbone, batch_p, batch_s, shape, s.latency_batch)  # warm-up
            times = []  # at least latency_repeats batches and latency_min_seconds of timing
            while len(times) < s.latency_repeats or sum(times) < s.latency_min_seconds:
                tick = time.perf_counter()
                sample(gen, backbone, batch_p, batch_s, shape, s.latency_batch)
                times.append(time.perf_counter() - tick)
            per_video = statistics.median(times) / len(batch_p)
            latency[key] = {"latency_s": per_video, "per_step_s": per_video / steps, "steps": steps,
                            "batch": len(batch_p), "repeats": len(times)}
            log_metrics({f"{key}/latency_s": per_video})
            log.info("sample: %s %.4f s per video", key, per_video)
        write_json(out_dir / "latency.json", latency)
    return latency


def run_evaluate(params: Params, samples: Path = SAMPLE_DIR, metrics_path: Path = METRICS,
                 out_dir: Path = EVAL_DIR) -> dict:
    """Score every sample directory; write reports/metrics.json and the per-video table."""
    import mlflow
    import pandas as pd

    from dcm.evaluation import psnr, run_vbench, ssim, vbench_availability, vbench_scores
    from dcm.io import read_manifest, read_mp4, write_json
    from dcm.tracking import log_headline, log_metrics
    from dcm.world.metrics import aggregate_scores, evaluate_video

    plan = [f"{m}@{k}" for m, k in sample_plan(params)]
    latency_path = samples / "latency.json"
    if not latency_path.exists():
        raise FileNotFoundError(f"{latency_path} is missing: run the sample stage first")
    latency = json.loads(latency_path.read_text())
    manifests = {}
    for key in plan:  # every folder checked before any scoring
        manifests[key] = read_manifest(samples / key)
        method, steps = key.split("@")
        wrong = [r["file"] for r in manifests[key] if r["method"] != method or int(r["steps"]) != int(steps)]
        if wrong:
            raise ValueError(f"{samples / key} holds videos of another method or step count: {wrong[:3]}")
    teacher_key = f"teacher@{params.flow.steps}"
    teacher = {}
    if teacher_key in manifests:
        teacher = {(r["prompt"], r["seed"]): read_mp4(samples / teacher_key / r["file"]) for r in manifests[teacher_key]}
    present, missing = vbench_availability() if params.evaluate.vbench else ([], {})
    for dim, files in missing.items():
        log.warning("VBench %s not scored: weights missing at %s", dim, ", ".join(files))

    world = params.world.to_config()
    toy = params.model.backbone == "tiny"  # the toy world's evaluator scores only the toy world's videos
    results, rows = {}, []
    with stage_run("evaluate", params):
        for key, records in manifests.items():
            key_rows = []
            vb = run_vbench(samples / key, present) if present else {}
            for r in records:
                video = read_mp4(samples / key / r["file"])
                row = {"key": key, "method": r["method"], "steps": r["steps"], "file": r["file"], "prompt": r["prompt"],
                       "seed": r["seed"], **(evaluate_video(video, r["prompt"], world) if toy else {})}
                ref = teacher.get((r["prompt"], r["seed"]))
                if ref is not None:
                    row["psnr_vs_teacher"], row["ssim_vs_teacher"] = psnr(video, ref), ssim(video, ref)
                for dim, scores in vb.items():
                    row[f"vbench_{dim}"] = scores[r["file"]]
                key_rows.append(row)
            scores = aggregate_scores(key_rows) if toy else {}
            entry = {**scores, **latency.get(key, {}), "videos": len(key_rows)}
            if teacher_key in latency and key in latency:
                entry["speedup_vs_teacher"] = latency[teacher_key]["latency_s"] / latency[key]["latency_s"]
            if teacher:
                entry["psnr_vs_teacher"] = float(np.mean([r["psnr_vs_teacher"] for r in key_rows]))
                entry["ssim_vs_teacher"] = float(np.mean([r["ssim_vs_teacher"] for r in key_rows]))
            if vb:
                per_dim = {dim: float(np.mean(list(v.values()))) for dim, v in vb.items()}
                entry.update({f"vbench_{d}": v for d, v in per_dim.items()})
                entry.update(vbench_scores(per_dim))
            if missing:
                entry["vbench_missing"] = sorted(missing)
            results[key] = entry
            rows.extend(key_rows)
            log_metrics({f"{key}/{k}": v for k, v in entry.items()})
            log_headline({f"{key}/{k}": entry[k] for k in ("total", "quality", "semantic", "latency_s",
                                                         "psnr_vs_teacher") if k in entry})
        out_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(out_dir / "videos.csv", index=False)
        write_json(metrics_path, results)
        mlflow.log_artifact(str(out_dir / "videos.csv"))
        mlflow.log_artifact(str(metrics_path))
    return results


REPORT = Path("reports/report.md")
FIGURES = Path("reports/figures")


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "–" if value is None else str(value)


def ablation_table(params: Params, steps: int = 4) -> list[list[str]]:
    """DCM's scores per ablation setting, from the latest ``evaluate`` run of each setting in MLflow."""
    import mlflow

    from dcm.report import ABLATION_ROWS
    from dcm.tracking import ensure_experiment, metric_name

    experiment = ensure_experiment(params.tracking.experiment)
    runs = mlflow.search_runs([experiment], filter_string="tags.`dcm.stage` = 'evaluate' and attributes.status = 'FINISHED'",
                              order_by=["start_time DESC"])
    rows = []
    key = metric_name(f"dcm@{steps}")
    for label, flags in ABLATION_ROWS:
        if runs.empty:
            break
        match = runs
        for name, flag in zip(("od", "pe", "tc", "gf"), flags, strict=True):
            column = f"tags.ablation.{name}"
            if column not in match:
                match = match.iloc[0:0]
                break
            match = match[match[column] == str(flag)]
        match = match[match["tags.boundary"] == str(params.boundary)] if "tags.boundary" in match else match
        if match.empty or f"metrics.{key}/total" not in match:
            continue
        run = match.iloc[0]
        rows.append([label, _fmt(run[f"metrics.{key}/total"]), _fmt(run.get(f"metrics.{key}/quality")),
                     _fmt(run.get(f"metrics.{key}/semantic")), _fmt(run.get("tags.dvc.exp_name"))])
    return rows


def run_report(params: Params, metrics_path: Path = METRICS, artifacts: Path = Path("artifacts"),
               report: Path = REPORT, figures: Path = FIGURES) -> Path:
    """Write the Markdown report and its figures; log them to MLflow."""
    import mlflow
    from safetensors.torch import load_file

    from dcm import report as rp
    from dcm.io import atomic_write_text, read_manifest, read_mp4
    from dcm.trajectories import TrajectorySpec, load as load_trajectories

    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} is missing: run the evaluate stage first")
    metrics = json.loads(metrics_path.read_text())
    figures.mkdir(parents=True, exist_ok=True)
    rel = figures.relative_to(report.parent)
    with stage_run("report", params):
        teacher_key = f"teacher@{params.flow.steps}"
        header = ["method", "steps", "latency (s/video)", "speedup", "Total", "Quality", "Semantic",
                  "PSNR vs teacher", "SSIM vs teacher", "VBench flicker"]
        rows = []
        for key, m in metrics.items():
            method, steps = key.split("@")
            rows.append([method, steps, _fmt(m.get("latency_s")), _fmt(m.get("speedup_vs_teacher"), 1),
                         _fmt(m.get("total")), _fmt(m.get("quality")), _fmt(m.get("semantic")),
                         "–" if key == teacher_key else _fmt(m.get("psnr_vs_teacher"), 2),
                         "–" if key == teacher_key else _fmt(m.get("ssim_vs_teacher")),
                         _fmt(m.get("vbench_temporal_flickering"))])
        lines = ["# DCM on the embedded toy world", "",
                 "Generated by the `report` stage from `reports/metrics.json`, the stage folders under "
                 "`artifacts/` and the MLflow runs. Scores are the toy world's analytic VBench-style scores "
                 "(0-1; `dcm.world.metrics`); latency is the median per-video time in one CPU process.", "",
                 "## Methods (paper Table 1 analog)", "", rp.table(rows, header), ""]
        bar = rp.research_bar(metrics, teacher_key)
        if bar:
            lines += ["## The paper's claims on this run", "", rp.table(bar, ["claim", "measured", "holds"]), ""]

        ablations = ablation_table(params)
        lines += ["## Ablations at 4 steps (paper Table 3 analog)", ""]
        if ablations:
            lines += [rp.table(ablations, ["setting", "Total", "Quality", "Semantic", "DVC experiment"]), ""]
        else:
            lines += ["No ablation experiments in MLflow yet: run them with `dvc exp run -S ablation.od=false ...`.", ""]

        lines += ["## Figures", ""]
        for stage, title in (("lcm", "LCM (one model, one phase)"), ("semantic", "vanilla model (ablation.od=false)")):
            csv_path = artifacts / stage / "buckets.csv"
            if csv_path.exists():
                rp.fig_noise_levels(csv_path, figures / f"noise_levels_{stage}.png", title)
                lines += [f"![loss and gradient norm by noise level, {title}]({rel}/noise_levels_{stage}.png)", ""]

        shape = json.loads((artifacts / "trajectories" / "manifest.json").read_text())["spec"]["shape"]
        spec = TrajectorySpec.from_params(params, tuple(shape))
        data = load_trajectories(artifacts / "trajectories", spec, verify_hash=False)
        indices, distances = rp.adjacent_l1(data.latents, list(spec.stored))
        rp.fig_adjacent_l1(indices, distances, params.boundary, figures / "adjacent_l1.png")
        lines += [f"![L1 distance between adjacent teacher steps]({rel}/adjacent_l1.png)", ""]

        teacher = load_file(str(next((artifacts / "teacher" / "model" / "transformer").glob("*.safetensors"))))
        full = {name: load_file(str(p)) for name in ("semantic", "detail", "lcm", "pcm")
                for p in sorted((artifacts / name / "model").glob("*.safetensors"))[:1]}
        pairs = {}
        if "semantic" in full and "detail" in full:
            pairs["detail expert vs semantic expert"] = rp.relative_change(full["detail"], full["semantic"])
        for name in full:
            pairs[f"{name} vs teacher"] = rp.relative_change(full[name], teacher)
        if pairs:
            rp.fig_parameter_change(pairs, figures / "parameter_change.png")
            lines += [f"![relative parameter change by module type]({rel}/parameter_change.png)", ""]
            if "detail expert vs semantic expert" not in pairs:
                lines += ["The detail expert here is parameter-efficient (LoRA + copied layers), so the figure "
                          "compares each full student with the teacher; `dvc exp run -S ablation.pe=false` trains "
                          "two full experts and adds their direct comparison.", ""]

        at4 = {m: f"{m}@{params.flow.steps if m == 'teacher' else 4}" for m in params.sample.methods}
        at4 = {m: k for m, k in at4.items() if (artifacts / "samples" / k).exists()}
        if at4:
            records = {m: read_manifest(artifacts / "samples" / k)[:3] for m, k in at4.items()}
            videos = {m: [read_mp4(artifacts / "samples" / k / r["file"]) for r in records[m]] for m, k in at4.items()}
            prompts = [r["prompt"] for r in next(iter(records.values()))]
            rp.method_grid(videos, prompts, figures / "methods_4step.png", figures / "methods_4step.gif")
            lines += ["Teacher (50 steps) against the students at 4 steps, same prompts and noise:", "",
                      f"![methods at 4 steps]({rel}/methods_4step.png)", "", f"Animated: `{rel}/methods_4step.gif`.", ""]
        atomic_write_text(report, "\n".join(lines))
        mlflow.log_artifact(str(report))
        mlflow.log_artifacts(str(figures), artifact_path="figures")
    return report
