"""Stage ``teacher_eval``: sample the teacher on held-out seeds, score it, and probe what it learned."""

from __future__ import annotations

import logging
import time

from dcm.config import Params
from dcm.layout import Layout
from dcm.tracking import stage_run

log = logging.getLogger(__name__)


def run_teacher_eval(params: Params, layout: Layout = Layout()) -> dict[str, float]:
    """Sample the teacher (``flow.steps`` Euler steps, CFG) on held-out seeds; write the report,
    frame grid, mp4s and metrics. Toy world: score the videos, and run the denoising and
    prompt-swap probes (what the teacher reads from a noised video, and which words it listens to)."""
    import mlflow
    import pandas as pd
    import torch

    from dcm.data.prompts import heldout_prompts, load_teacher_for_prompts
    from dcm.data.trajectories import latent_shape
    from dcm.io import write_json, write_manifest, write_mp4
    from dcm.models import check_guidance_scale_2, load_backbone
    from dcm.reporting.documents import teacher_report
    from dcm.reporting.figures import accuracy_by_noise, frame_grid
    from dcm.sampling import sample, teacher_sampler
    from dcm.teacher.probes import ACCURACY_KEYS, denoising_accuracy, ideal_swap_gap, prompt_swap_probe
    from dcm.tracking import log_metrics
    from dcm.world.grammar import parse_prompt
    from dcm.world.metrics import aggregate_scores, evaluate_video
    from dcm.world.render import to_video

    cfg, toy = params.teacher_eval, params.model.toy_world
    prompts, seeds = heldout_prompts(None if toy else params.sample.prompt_file, cfg.videos, cfg.seed)
    check_guidance_scale_2(layout.teacher_model, "teacher_eval.guidance_scale_2", cfg.guidance_scale_2)
    backbone = load_backbone(layout.teacher_model) if toy else load_teacher_for_prompts(
        params, "sample.prompt_file", layout.teacher_model)
    teacher = teacher_sampler(backbone, backbone.transformer, params.flow.steps, params.flow.shift, cfg.guidance_scale,
                              cfg.guidance_scale_2)
    shape = latent_shape(params, backbone)
    out = layout.teacher_report_dir
    with stage_run("teacher_eval", params, {"method": "teacher", "steps": str(params.flow.steps)}):
        tick = time.perf_counter()  # the first batch alone is timed
        latents = [sample(teacher, backbone, prompts[: cfg.batch_size], seeds[: cfg.batch_size], shape, cfg.batch_size)]
        batch_seconds = time.perf_counter() - tick
        if len(prompts) > cfg.batch_size:
            latents.append(sample(teacher, backbone, prompts[cfg.batch_size:], seeds[cfg.batch_size:], shape,
                                  cfg.batch_size, progress=True))
        videos = [to_video(backbone.decode_latents(x[None])[0]) for x in torch.cat(latents)]

        records, rows = [], []
        for i, (video, prompt, seed) in enumerate(zip(videos, prompts, seeds, strict=True)):
            name = f"{i:04d}.mp4"
            write_mp4(out / "samples" / name, video)
            records.append({"file": name, "prompt": prompt, "seed": seed, "method": "teacher",
                            "steps": params.flow.steps, "guidance_scale": cfg.guidance_scale,
                            **({"guidance_scale_2": cfg.guidance_scale_2} if cfg.guidance_scale_2 is not None else {})})
            scores = evaluate_video(video, prompt, params.world.to_config()) if toy else {}
            rows.append({"file": name, "prompt": prompt, "seed": seed, **scores})
        write_manifest(out / "samples", records)
        pd.DataFrame(rows).to_csv(out / "videos.csv", index=False)
        metrics = {**(aggregate_scores(rows, params.world.to_config()) if toy else {}), "batch_seconds": batch_seconds,
                   "batch_size": min(cfg.batch_size, len(prompts)), "videos": len(prompts), "steps": params.flow.steps,
                   "guidance_scale": cfg.guidance_scale}
        frame_grid(videos[:8], prompts[:8], out / "grid.png")
        probe, swap, ideal = [], [], {}
        if toy and cfg.probe_sigmas:
            items = [(parse_prompt(p), s) for p, s in zip(prompts, seeds, strict=True)]
            probe = denoising_accuracy(backbone, backbone.transformer, items, params, cfg.probe_sigmas,
                                       cfg.guidance_scale, cfg.batch_size)
            pd.DataFrame(probe).to_csv(out / "denoising.csv", index=False)
            accuracy_by_noise(probe, {k: metrics[k] for k in ACCURACY_KEYS}, out / "denoising.png")
            swap = prompt_swap_probe(backbone, backbone.transformer, items, params, cfg.probe_sigmas, cfg.batch_size)
            ideal = ideal_swap_gap(items, params)
            pd.DataFrame(swap).to_csv(out / "prompt_swap.csv", index=False)
            metrics.update({f"swap_{k}@{row['sigma']}": v for row in swap for k, v in row.items() if k != "sigma"})
        write_json(out / "metrics.json", metrics)
        teacher_report(layout.teacher_report, out, metrics, probe, swap, ideal, params)
        log_metrics(metrics)
        mlflow.log_artifact(str(layout.teacher_report))
        mlflow.log_artifacts(str(out), artifact_path="teacher")
    if toy:
        log.info("teacher: %s", ", ".join(f"{k}={metrics[k]:.3f}" for k in ("color", "object_class",
                                                                             "motion_direction", "scene", "total")))
    return metrics
