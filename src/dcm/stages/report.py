"""Stage ``report``: the Markdown report and its figures, from the pipeline's outputs and MLflow."""

from __future__ import annotations

import json

from dcm.config import Params
from dcm.errors import MissingInputError
from dcm.layout import BUCKETS, LATENCY, STUDENT_MODEL, STUDENT_STAGES, MANIFEST, VALIDATION, Layout
from dcm.tracking import stage_run


def analysis_figures(params: Params, layout: Layout) -> list[str]:
    """Draw the paper's analysis figures from the stage folders; return their Markdown lines."""
    from safetensors.torch import load_file

    from dcm.data.trajectories import TrajectorySpec
    from dcm.data.trajectories import load as load_trajectories
    from dcm.io import read_manifest, read_mp4
    from dcm.reporting import figures as fig
    from dcm.reporting.analysis import adjacent_l1, relative_change
    from dcm.reporting.documents import relative

    out = layout.figures
    rel = relative(out, layout.report)
    lines = []
    if layout.boundary_suggestion.exists():
        s = json.loads(layout.boundary_suggestion.read_text())
        at = s.get("at_boundary") or {}
        lines += [f"Boundary suggested from the teacher's trajectories (`dcm boundary`, by {s['method']}): "
                  f"**{s['boundary']}** (sigma {s['sigma']:.4f}); this run uses {params.boundary}."
                  + (" Committed there: " + ", ".join(f"{k} {v:.2f}" for k, v in at.items()) + "." if at else ""),
                  "", f"![boundary suggestion]({relative(layout.boundary_suggestion_figure, layout.report)})", ""]
    for stage, title in (("lcm", "LCM (one model, one phase)"), ("semantic", "vanilla model (ablation.od=false)")):
        csv_path = layout.student(stage) / BUCKETS
        if csv_path.exists():
            fig.fig_noise_levels(csv_path, out / f"noise_levels_{stage}.png", title)
            lines += [f"![loss and gradient norm by noise level, {title}]({rel}/noise_levels_{stage}.png)", ""]

    import pandas as pd

    curves = {stage: pd.read_csv(layout.student(stage) / VALIDATION) for stage in STUDENT_STAGES
              if (layout.student(stage) / VALIDATION).exists()}
    if curves:
        fig.validation_curves(curves, out / "validation_curves.png")
        key = "total" if all("total" in frame for frame in curves.values()) else "psnr"
        last = ", ".join(f"{stage} {frame[key].iloc[-1]:.3f} at step {int(frame.step.iloc[-1])}"
                         for stage, frame in curves.items())
        lines += [f"Each student's few-step samples of the validation set while it trains (the detail expert "
                  "with the semantic expert before it; the semantic expert with the teacher after it), "
                  "compared with the teacher's samples from the same noise (PSNR, SSIM, and per-frame "
                  "variance, frame change and saturation as shares of the teacher's, which show collapse) "
                  f"and on the toy world scored. Last {key}: {last}. Each stage's steps and learning rate "
                  "were chosen where its validation score stops improving, in longer runs that go past that "
                  "step (`reports/studies/student_study.md`, `research/student_study.py`). The students "
                  f"learned from `distill.source = {params.distill.source}`.", "",
                  f"![validation curves]({rel}/validation_curves.png)", ""]

    shape = json.loads((layout.trajectories / MANIFEST).read_text())["spec"]["shape"]
    spec = TrajectorySpec.from_params(params, tuple(shape))
    data = load_trajectories(layout.trajectories, spec, verify_hash=False)
    indices, distances = adjacent_l1(data.latents, list(spec.stored))
    fig.fig_adjacent_l1(indices, distances, params.boundary, out / "adjacent_l1.png")
    lines += [f"![L1 distance between adjacent teacher steps]({rel}/adjacent_l1.png)", ""]

    teacher = load_file(str(next((layout.teacher_model / "transformer").glob("*.safetensors"))))
    full = {name: load_file(str(p)) for name in ("semantic", "detail", "lcm", "pcm")
            for p in sorted((layout.student(name) / STUDENT_MODEL).glob("*.safetensors"))[:1]}
    pairs = {}
    if "semantic" in full and "detail" in full:
        pairs["detail expert vs semantic expert"] = relative_change(full["detail"], full["semantic"])
    for name in full:
        pairs[f"{name} vs teacher"] = relative_change(full[name], teacher)
    if pairs:
        fig.fig_parameter_change(pairs, out / "parameter_change.png")
        lines += [f"![relative parameter change by module type]({rel}/parameter_change.png)", ""]
        if "detail expert vs semantic expert" not in pairs:
            lines += ["The detail expert here is parameter-efficient (LoRA + copied layers), so the figure "
                      "compares each full student with the teacher; `dvc exp run -S ablation.pe=false` trains "
                      "two full experts and adds their direct comparison.", ""]

    at4 = {m: f"{m}@{params.flow.steps if m == 'teacher' else 4}" for m in params.sample.methods}
    at4 = {m: k for m, k in at4.items() if (layout.samples / k).exists()}
    if at4:
        records = {m: read_manifest(layout.samples / k)[:3] for m, k in at4.items()}
        videos = {m: [read_mp4(layout.samples / k / r["file"]) for r in records[m]] for m, k in at4.items()}
        prompts = [r["prompt"] for r in next(iter(records.values()))]
        fig.method_grid(videos, prompts, out / "methods_4step.png", out / "methods_4step.gif")
        lines += ["Teacher (50 steps) against the students at 4 steps, same prompts and noise:", "",
                  f"![methods at 4 steps]({rel}/methods_4step.png)", "", f"Animated: `{rel}/methods_4step.gif`.", ""]
    return lines


def evidence(params: Params, layout: Layout, runs):
    """What the claims are decided on: this run's per-video scores and timing rounds, and the per-video
    scores of the newest run of each seed of this configuration (None unless every one has them)."""
    import pandas as pd

    from dcm.reporting.claims import Evidence, per_video_scores
    from dcm.reporting.runs import per_video_tables
    from dcm.reporting.tables import newest_per_seed
    from dcm.tracking import config_tags

    world = params.world.to_config()
    latency = json.loads((layout.samples / LATENCY).read_text()) if (layout.samples / LATENCY).exists() else {}
    if not params.model.toy_world:  # no per-video Totals: only the timing claims
        return Evidence({}, world, latency), None
    this_run = Evidence(per_video_scores([pd.read_csv(layout.evaluation / "videos.csv")]), world, latency)
    seeds = newest_per_seed(runs, config_tags(params)["dcm.config"])
    tables = per_video_tables(list(seeds.run_id)) if len(seeds) > 1 else None
    return this_run, (Evidence(per_video_scores(tables), world, latency) if tables else None)


def run_report(params: Params, layout: Layout = Layout()) -> None:
    """Write ``reports/report.md`` and its figures; log them to MLflow."""
    import mlflow

    from dcm.io import atomic_write_text
    from dcm.reporting.ablations import ablation_section
    from dcm.reporting.claims import decide_claims
    from dcm.reporting.documents import pipeline_report
    from dcm.reporting.runs import mlflow_runs

    if not layout.metrics.exists():
        raise MissingInputError(f"{layout.metrics} is missing: run the evaluate stage first (`dvc repro evaluate`)")
    if not (layout.trajectories / MANIFEST).exists():
        raise MissingInputError(f"{layout.trajectories / MANIFEST} is missing: the report's figures need "
                                "the trajectories (`dvc repro trajectories`)")
    metrics = json.loads(layout.metrics.read_text())
    layout.figures.mkdir(parents=True, exist_ok=True)
    with stage_run("report", params):
        figures = analysis_figures(params, layout)
        runs = mlflow_runs(params)
        teacher_key = f"teacher@{params.flow.steps}"
        this_run, over_seeds = evidence(params, layout, runs)
        seeded = over_seeds is not None and over_seeds.seeds > 1
        basis = over_seeds if seeded else this_run
        claims = decide_claims(basis, teacher_key)
        from dcm.distill.batches import teacher_calls

        text = pipeline_report(metrics, teacher_key, runs, figures, params, claims,
                               f"over {basis.seeds} seeds and their videos" if seeded else "over this run's videos",
                               {key: over_seeds.total(key) for key in over_seeds.boot} if seeded else None,
                               teacher_calls(params, 2 if params.trajectories.guidance_scale != 1.0 else 1),
                               ablation_section(runs, params, params.sample.steps))
        atomic_write_text(layout.report, text)
        mlflow.log_artifact(str(layout.report))
        mlflow.log_artifacts(str(layout.figures), artifact_path="figures")
