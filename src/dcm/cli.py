"""``dcm``: run single pipeline stages and inspect the toy world from the command line.

Every command reads ``params.yaml`` (``--params`` to choose another file), validates it
before doing anything heavy, and logs one MLflow run per stage. A stage command runs what its
``stages/*.py`` script runs (:func:`dcm.stages.run_stage`). An error in the user's input
(:class:`dcm.errors.DcmError`) is one line on stderr and exit code 2; ``--verbose`` shows its
traceback.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from dcm.config import load_params
from dcm.errors import UsageError, reporting_user_errors
from dcm.stages import run_stage, setup_logging

app = typer.Typer(
    help="Dual-Expert Consistency Model distillation for text-to-video diffusion.\n\n"
    "Each pipeline stage of dvc.yaml is also a command here; `dvc repro` runs them in order.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

ParamsOption = typer.Option(Path("params.yaml"), "--params", "-p", help="parameter file to read and validate")
_verbose = {"on": False}


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging, and tracebacks of "
                                        "input errors")) -> None:
    _verbose["on"] = verbose
    setup_logging(verbose)


def command(*args, **kwargs):
    """``app.command``, with input errors printed as one line (exit code 2) instead of a traceback."""
    def register(fn):
        @functools.wraps(fn)
        def run(*a, **k):
            with reporting_user_errors(_verbose["on"]):
                return fn(*a, **k)
        return app.command(*args, **kwargs)(run)
    return register


@command()
def params(path: Path = ParamsOption) -> None:
    """Validate the parameter file and print every resolved value (defaults included)."""
    typer.echo(json.dumps(load_params(path).model_dump(), indent=2))


def _show_boundary(suggestion) -> None:
    typer.echo(f"suggested boundary: {suggestion.boundary} (sigma {suggestion.sigma:.4f}, {suggestion.method}); "
               f"set it with `dvc exp run -S boundary={suggestion.boundary}` or in params.yaml")


#: every DVC stage's command: its help text and what it prints of the stage's result
STAGE_COMMANDS: dict[str, tuple[str, Callable[[Any], None] | None]] = {
    "teacher": (
        "Train the tiny teacher by flow matching on the toy world (resumes from its checkpoint).\n\n"
        "Writes artifacts/teacher/checkpoint.safetensors every `teacher.checkpoint_every` steps and the EMA\n"
        "model to artifacts/teacher/model/. Kill it at any time; rerunning continues. With a real\n"
        "backbone (model.backbone: wan | cogvideox | hunyuanvideo) nothing is trained: model.path is\n"
        "checked and artifacts/teacher/model/backbone.json points at it.", None),
    "teacher_eval": (
        "Sample the trained teacher on held-out seeds and write reports/teacher.md, its frame\n"
        "grid, the mp4s (with manifest.jsonl) and metrics.", None),
    "trajectories": (
        "Generate the teacher's CFG-guided ODE trajectories on the flow.steps grid into\n"
        "artifacts/trajectories/ (shards + manifest.json). Finished shards are skipped on rerun;\n"
        "with launch.num_processes > 1 it re-launches itself under `accelerate launch` and each process\n"
        "writes its own shards.", None),
    "dataset": (
        "Encode a video dataset into artifacts/data/ (VAE latents and text embeddings in shards) for\n"
        "distill.source: data. dataset.path: a folder of videos with metadata.jsonl or metadata.csv\n"
        "(file_name, text; other column names via dataset.columns); on the toy world with no path, the\n"
        "ground truth of dataset.videos training prompts is rendered first. Unreadable and too-short videos\n"
        "are skipped, named in the log and counted in artifacts/data/summary.json. Finished shards are\n"
        "skipped on rerun. With distill.source: trajectories there is nothing to do.", None),
    "validation": (
        "Make the fixed validation set the students are checked on while they train (every\n"
        "distill.validate_every steps): distill.validate_videos prompts and noises and the teacher's own\n"
        "flow.steps-step samples, in artifacts/validation/.", None),
    "boundary": (
        "Suggest the boundary from the teacher's trajectories (run `dcm trajectories` first): the grid\n"
        "index where the toy world's layout and motion are committed in 90% of the trajectories (for a\n"
        "real backbone, the knee of the normalised adjacent-step change). Prints it and writes\n"
        "reports/boundary_suggestion.json and reports/boundary_suggestion.png; params.yaml is not changed.",
        _show_boundary),
    "semantic": (
        "Train the semantic expert on the noise-side sub-trajectory [flow.steps, boundary] "
        "(full fine-tune from the teacher, + temporal coherence loss with ablation.tc). With "
        "ablation.od=false, train one vanilla model over both sub-trajectories instead.", None),
    "detail": (
        "Train the detail expert on [boundary, 0]: LoRA + copied timestep layers on the frozen "
        "semantic expert (ablation.pe) or a full fine-tune (OD), with GAN + feature matching on teacher "
        "features (ablation.gf). Writes nothing to train when ablation.od=false.", None),
    "lcm": ("Train the LCM baseline: one student, one phase over the whole trajectory.", None),
    "pcm": ("Train the PCM baseline: one student, pcm.phases phases over the whole trajectory.", None),
    "sample": (
        "Sample every method of sample.methods (teacher at flow.steps with CFG; undistilled, the teacher\n"
        "with CFG, and lcm, pcm and dcm with guidance 1 at each of sample.steps) on the same held-out prompts "
        "and initial noise, into\n"
        "artifacts/samples/<method>@<steps>/ (mp4 + manifest.jsonl); then time them in sample.latency_repeats\n"
        "interleaved rounds (each round times every method and step count once, in a shuffled order).", None),
    "evaluate": (
        "Score artifacts/samples: toy-world Semantic/Quality/Total, PSNR and SSIM against the teacher,\n"
        "and VBench (temporal_flickering, plus any dimension whose weights are under $VBENCH_CACHE_DIR).\n"
        "Writes reports/metrics.json (each Total with its 95% bootstrap interval over videos) and\n"
        "reports/evaluation/videos.csv.", None),
    "report": (
        "Write reports/report.md (Table 1 and Table 3 analogs, and the paper's claims decided with bootstrap\n"
        "intervals: yes or no only when the margin's interval is clear of zero, else within noise) and\n"
        "reports/figures/ (loss and grad norm by\n"
        "noise level, adjacent-step L1 with the boundary, parameter change by module type, and a 4-step\n"
        "side-by-side grid and GIF); log all of it to MLflow.", None),
}


def _stage_command(stage: str, help_text: str, show: Callable[[Any], None] | None) -> None:
    """Register ``dcm <stage>`` (``-`` for ``_``): the DVC stage run as its script runs it
    (:func:`dcm.stages.run_stage`, which reports input errors itself)."""
    def run(path: Path = ParamsOption) -> None:
        result = run_stage(stage, path, _verbose["on"])
        if show is not None:
            show(result)

    run.__doc__ = help_text
    app.command(stage.replace("_", "-"))(run)


for _stage, (_help, _show) in STAGE_COMMANDS.items():
    _stage_command(_stage, _help, _show)


@command()
def grid(
    name: str = typer.Argument(..., help="'ablations' (the paper's Table 3 rows), 'boundary' (a sweep) or "
                               "'seeds' (the current params at several distill.seed values)"),
    values: str = typer.Option(None, help="boundary or seed values: a list '30,35' or a range '20:45:5' (end "
                               "excluded); default 25,30,35,40,45 for boundary, 0,1,2 for seeds"),
    seeds: str = typer.Option(None, help="run every experiment of the grid at each of these distill.seed values, "
                              "e.g. '0,1,2' (for mean ± sd in the tables)"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="experiments run in parallel"),
    prefix: str = typer.Option(None, help="experiment name prefix (default: a timestamp)"),
    path: Path = ParamsOption,
) -> None:
    """Queue a named grid of DVC experiments and run it; exit non-zero naming any that failed.

    Run `dvc repro` first so the queued experiments start from cached outputs. Compare the
    results with `dcm compare` or in the MLflow UI (one parent run per experiment); the report's
    tables show the mean ± sd over the seeds found.
    """
    from dcm.experiments import named_grid, run_grid

    params = load_params(path)
    names = run_grid(named_grid(name, values, params, seeds), params, jobs=jobs, prefix=prefix)
    typer.echo("finished: " + ", ".join(names))


@command()
def compare(
    source: str = typer.Option("mlflow", help="'mlflow' (parent runs) or 'dvc' (dvc exp show --json)"),
    out: Path = typer.Option(Path("reports"), help="folder for ablation.md and boundary.png"),
    path: Path = ParamsOption,
) -> None:
    """Write reports/ablation.md (Table 3 analog) and reports/boundary.png (Total against boundary)
    from the experiments' runs."""
    from dcm.io import atomic_write_text
    from dcm.reporting.documents import ablation_report
    from dcm.reporting.figures import boundary_plot
    from dcm.reporting.runs import dvc_runs, mlflow_runs

    if source not in ("mlflow", "dvc"):
        raise UsageError(f"--source {source!r}: use 'mlflow' or 'dvc'")
    params = load_params(path)
    frame = mlflow_runs(params) if source == "mlflow" else dvc_runs()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablation.md", ablation_report(frame))
    boundary_plot(frame, out / "boundary.png")
    typer.echo(f"{len(frame)} experiments -> {out / 'ablation.md'}, {out / 'boundary.png'}")


@command()
def render(
    prompt: str = typer.Argument(..., help="e.g. 'a red circle moving left on a stripes background'"),
    seed: int = typer.Option(0, help="fixes start position, speed and texture phase"),
    out: Path = typer.Option(Path("render.mp4"), help="mp4 to write"),
    path: Path = ParamsOption,
) -> None:
    """Render one ground-truth toy-world video and print what the evaluator recovers from it."""
    from dcm.io import write_mp4
    from dcm.world import parse_prompt, render_video
    from dcm.world.metrics import evaluate_video

    world = load_params(path).world.to_config()
    parsed = parse_prompt(prompt)
    video = render_video(parsed, seed, world)
    write_mp4(out, video)
    typer.echo(json.dumps(evaluate_video(video, parsed, world), indent=2))


@command("export")
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
    from dcm.export import export_detail_lora, export_wan_pipeline
    from dcm.layout import Layout

    if fmt not in ("pipeline", "lora"):
        raise UsageError(f"unknown --format {fmt!r}; known: pipeline, lora")
    params = load_params(path)
    layout = Layout()
    if fmt == "pipeline":
        done = export_wan_pipeline(params, layout, out or layout.export("pipeline"), steps)
    else:
        done = export_detail_lora(params, layout, out or layout.export("lora"))
    typer.echo(f"exported to {done} (see {done / 'README.md'})")


@command()
def estimate(
    model: str = typer.Option(None, "--model", "-m", help="a shipped architecture, no weights needed: "
                              "wan2.1-1.3b, wan2.1-14b, cogvideox-2b, cogvideox-5b, hunyuanvideo, and (estimate "
                              "only so far) wan2.2-t2v-a14b, wan2.2-i2v-a14b, wan2.2-ti2v-5b, wan2.1-i2v-14b-480p "
                              "(its backbone, video size and text length replace params.yaml's model section)"),
    processes: int = typer.Option(None, min=1, help="GPUs (default: launch.num_processes)"),
    sharding: str = typer.Option(None, help="'fsdp' (full shard) or 'ddp' (replicated); default: from "
                                 "launch.config_file"),
    tflops: float = typer.Option(400.0, min=1.0, help="sustained bf16 TFLOP/s per GPU (400: ~40% MFU of an H100)"),
    path: Path = ParamsOption,
) -> None:
    """Print parameter counts (exact, from meta tensors: no weights read), memory per GPU and time of
    trajectories, semantic, detail and sample for the params, with every assumption behind them.

    With --model the architecture comes from the configs shipped with dcm, so the estimate runs before
    anything is downloaded; without it, from model.path (or the tiny teacher's params).
    """
    from dcm.estimate import estimate as run_estimate

    if sharding not in (None, "fsdp", "ddp"):
        raise UsageError(f"--sharding {sharding!r}: use 'fsdp' or 'ddp'")
    typer.echo(run_estimate(load_params(path), processes, sharding, tflops, model_name=model).render())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
