"""``dcm``: run single pipeline stages and inspect the toy world from the command line.

Every command reads ``params.yaml`` (``--params`` to choose another file), validates it
before doing anything heavy, and logs one MLflow run per stage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from dcm.config import ParamsError, load_params

app = typer.Typer(
    help="Dual-Expert Consistency Model distillation for text-to-video diffusion.\n\n"
    "Each pipeline stage of dvc.yaml is also a command here; `dvc repro` runs them in order.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

ParamsOption = typer.Option(Path("params.yaml"), "--params", "-p", help="parameter file to read and validate")


def _params(path: Path):
    try:
        return load_params(path)
    except ParamsError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def params(path: Path = ParamsOption) -> None:
    """Validate the parameter file and print every resolved value (defaults included)."""
    typer.echo(json.dumps(_params(path).model_dump(), indent=2))


@app.command()
def teacher(path: Path = ParamsOption) -> None:
    """Train the tiny teacher by flow matching on the toy world (resumes from its checkpoint).

    Writes artifacts/teacher/checkpoint.pt every `teacher.checkpoint_every` steps and the EMA
    model to artifacts/teacher/model/. Kill it at any time; rerunning continues. With a real
    backbone (model.backbone: wan | cogvideox | hunyuanvideo) nothing is trained: model.path is
    checked and artifacts/teacher/model/backbone.json points at it.
    """
    from dcm.pipeline import run_teacher

    run_teacher(_params(path))


@app.command("teacher-eval")
def teacher_eval(path: Path = ParamsOption) -> None:
    """Sample the trained teacher on held-out seeds and write reports/teacher.md, its frame
    grid, the mp4s (with manifest.jsonl) and metrics."""
    from dcm.pipeline import run_teacher_eval

    run_teacher_eval(_params(path))


@app.command()
def trajectories(path: Path = ParamsOption) -> None:
    """Generate the teacher's CFG-guided ODE trajectories on the flow.steps grid into
    artifacts/trajectories/ (shards + manifest.json). Finished shards are skipped on rerun;
    with launch.num_processes > 1 it re-launches itself under `accelerate launch` and each process
    writes its own shards."""
    from dcm.launch import relaunch
    from dcm.pipeline import run_trajectories

    params = _params(path)
    relaunch(params)
    run_trajectories(params)


def _distill_command(stage: str, doc: str):
    def command(path: Path = ParamsOption) -> None:
        from dcm.launch import relaunch
        from dcm.pipeline import run_distill

        params = _params(path)
        relaunch(params)  # under `accelerate launch` when launch.* asks for more processes
        run_distill(params, stage)

    command.__doc__ = doc
    app.command(stage)(command)


_distill_command("semantic", "Train the semantic expert on the noise-side sub-trajectory [flow.steps, boundary] "
                 "(full fine-tune from the teacher, + temporal coherence loss with ablation.tc). With "
                 "ablation.od=false, train one vanilla model over both sub-trajectories instead.")
_distill_command("detail", "Train the detail expert on [boundary, 0]: LoRA + copied timestep layers on the frozen "
                 "semantic expert (ablation.pe) or a full fine-tune (OD), with GAN + feature matching on teacher "
                 "features (ablation.gf). Writes nothing to train when ablation.od=false.")
_distill_command("lcm", "Train the LCM baseline: one student, one phase over the whole trajectory.")
_distill_command("pcm", "Train the PCM baseline: one student, pcm.phases phases over the whole trajectory.")


@app.command("sample")
def sample_cmd(path: Path = ParamsOption) -> None:
    """Sample every method of sample.methods (teacher at flow.steps with CFG; lcm, pcm and dcm at each
    of sample.steps with guidance 1) on the same held-out prompts and initial noise, into
    artifacts/samples/<method>@<steps>/ (mp4 + manifest.jsonl), and time each one."""
    from dcm.pipeline import run_sample
    from dcm.students import SamplingError

    try:
        run_sample(_params(path))
    except SamplingError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command("evaluate")
def evaluate_cmd(path: Path = ParamsOption) -> None:
    """Score artifacts/samples: toy-world Semantic/Quality/Total, PSNR and SSIM against the teacher,
    and VBench (temporal_flickering, plus any dimension whose weights are under $VBENCH_CACHE_DIR).
    Writes reports/metrics.json and reports/evaluation/videos.csv."""
    from dcm.pipeline import run_evaluate

    run_evaluate(_params(path))


@app.command("report")
def report_cmd(path: Path = ParamsOption) -> None:
    """Write reports/report.md (Table 1 and Table 3 analogs) and reports/figures/ (loss and grad norm by
    noise level, adjacent-step L1 with the boundary, parameter change by module type, and a 4-step
    side-by-side grid and GIF); log all of it to MLflow."""
    from dcm.pipeline import run_report

    run_report(_params(path))


@app.command()
def grid(
    name: str = typer.Argument(..., help="'ablations' (the paper's Table 3 rows) or 'boundary' (a sweep)"),
    values: str = typer.Option("25,30,35,40,45", help="boundary values: a list '30,35' or a range '20:45:5' "
                               "(end excluded)"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="experiments run in parallel"),
    prefix: str = typer.Option(None, help="experiment name prefix (default: a timestamp)"),
    path: Path = ParamsOption,
) -> None:
    """Queue a named grid of DVC experiments and run it; exit non-zero naming any that failed.

    Run `dvc repro` first so the queued experiments start from cached outputs. Compare the
    results with `dcm compare` or in the MLflow UI (one parent run per experiment).
    """
    from dcm.experiments import GridError, ablation_grid, boundary_grid, parse_values, run_grid

    params = _params(path)
    try:
        if name == "ablations":
            experiments = ablation_grid()
        elif name == "boundary":
            experiments = boundary_grid(parse_values(values), params)
        else:
            raise ValueError(f"unknown grid {name!r}; known: ablations, boundary")
        names = run_grid(experiments, params, jobs=jobs, prefix=prefix)
    except (ValueError, GridError) as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo("finished: " + ", ".join(names))


@app.command()
def compare(
    source: str = typer.Option("mlflow", help="'mlflow' (parent runs) or 'dvc' (dvc exp show --json)"),
    out: Path = typer.Option(Path("reports"), help="folder for ablation.md and boundary.png"),
    path: Path = ParamsOption,
) -> None:
    """Write reports/ablation.md (Table 3 analog) and reports/boundary.png (Total against boundary)
    from the experiments' runs."""
    from dcm.experiments import ablation_markdown, boundary_plot, dvc_runs, mlflow_runs
    from dcm.io import atomic_write_text

    params = _params(path)
    frame = mlflow_runs(params) if source == "mlflow" else dvc_runs()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablation.md", ablation_markdown(frame))
    boundary_plot(frame, out / "boundary.png")
    typer.echo(f"{len(frame)} experiments -> {out / 'ablation.md'}, {out / 'boundary.png'}")


@app.command()
def render(
    prompt: str = typer.Argument(..., help="e.g. 'a red circle moving left on a stripes background'"),
    seed: int = typer.Option(0, help="fixes start position, speed and texture phase"),
    out: Path = typer.Option(Path("render.mp4"), help="mp4 to write"),
    path: Path = ParamsOption,
) -> None:
    """Render one ground-truth toy-world video and print what the evaluator recovers from it."""
    from dcm.io import write_mp4
    from dcm.world import PromptError, parse_prompt, render_video
    from dcm.world.metrics import evaluate_video

    world = _params(path).world.to_config()
    try:
        parsed = parse_prompt(prompt)
    except PromptError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    video = render_video(parsed, seed, world)
    write_mp4(out, video)
    typer.echo(json.dumps(evaluate_video(video, parsed, world), indent=2))


@app.command("export")
def export_cmd(
    fmt: str = typer.Option("pipeline", "--format", help="'pipeline': a diffusers WanPipeline directory with both "
                            "experts (Wan only); 'lora': the PE detail expert as a diffusers LoRA + its copied "
                            "timestep layers (Wan, CogVideoX, HunyuanVideo)"),
    steps: int = typer.Option(4, min=1, help="pipeline: the num_inference_steps the export is documented for"),
    out: Path = typer.Option(None, help="output folder (default artifacts/export/wan or artifacts/export/detail_lora); "
                             "replaced atomically"),
    path: Path = ParamsOption,
) -> None:
    """Export the trained students (artifacts/semantic, artifacts/detail) to stock diffusers, loadable
    without dcm. Writes a README.md with the usage snippet and dcm_export.json. The stock scheduler
    runs its own sigmas, not dcm's DCM schedule: see the README for both side by side."""
    from dcm.export import ExportError, export_detail_lora, export_wan_pipeline
    from dcm.models import BackboneError
    from dcm.pipeline import TEACHER_DIR

    params = _params(path)
    try:
        if fmt == "pipeline":
            done = export_wan_pipeline(params, TEACHER_DIR / "model", Path("artifacts"),
                                       out or Path("artifacts/export/wan"), steps)
        elif fmt == "lora":
            done = export_detail_lora(params, Path("artifacts"), out or Path("artifacts/export/detail_lora"))
        else:
            raise ExportError(f"unknown --format {fmt!r}; known: pipeline, lora")
    except (ExportError, BackboneError) as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(f"exported to {done} (see {done / 'README.md'})")


@app.command()
def estimate(
    processes: int = typer.Option(None, min=1, help="GPUs (default: launch.num_processes)"),
    sharding: str = typer.Option(None, help="'fsdp' (full shard) or 'ddp' (replicated); default: from "
                                 "launch.config_file"),
    tflops: float = typer.Option(400.0, min=1.0, help="sustained bf16 TFLOP/s per GPU (400: ~40% MFU of an H100)"),
    path: Path = ParamsOption,
) -> None:
    """Print parameter counts (exact, from meta tensors: no weights read), memory per GPU and time of
    trajectories, semantic, detail and sample for the params, with every assumption behind them."""
    from dcm.estimate import estimate as run_estimate
    from dcm.models.base import BackboneError

    if sharding not in (None, "fsdp", "ddp"):
        typer.secho(f"--sharding {sharding!r}: use 'fsdp' or 'ddp'", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        typer.echo(run_estimate(_params(path), processes, sharding, tflops).render())
    except (BackboneError, ParamsError) as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
