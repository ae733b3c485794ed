"""Distillation figures: trajectory throughput, seconds per training step of every stage, the
wall time of each stage, and parameter counts (teacher; detail expert trainable with PE and OD).

    python benchmarks/distill_bench.py [--params params.yaml] [--steps N] [--videos N] [--teacher DIR]

Runs the trajectories stage and the four distillation stages in a temporary directory, with the
settings of the params file; ``--steps N`` and ``--videos N`` shorten them (0, the default,
keeps the params' own values: the full budget). Speed does not depend on the teacher's weights,
so a randomly initialised teacher of the same config gives the same figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from dcm.config import load_params
from dcm.experts import ParameterEfficientExpert, count_parameters
from dcm.models import build_tiny_backbone, load_backbone
from dcm.layout import Layout
from dcm.stages.distill import run_distill
from dcm.stages.trajectories import run_trajectories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=0, help="training steps per stage (0: the params' own)")
    parser.add_argument("--videos", type=int, default=0, help="trajectories to generate (0: the params' own)")
    parser.add_argument("--teacher", default="artifacts/teacher/model",
                        help="teacher directory; 'random' builds an untrained one from the params")
    args = parser.parse_args()
    root = Path.cwd()
    params = load_params(args.params)
    overrides = {"distill": {"checkpoint_every": 10**6}}
    if args.videos:
        overrides["trajectories"] = {"videos": args.videos}
    params = params.with_overrides(overrides)
    work = Path(tempfile.mkdtemp(prefix="dcm-bench-"))
    layout = Layout(work)
    teacher_dir = layout.teacher_model
    if args.teacher == "random":
        build_tiny_backbone(params.model.tiny, seed=params.teacher.seed).save_pretrained(teacher_dir)
    else:
        teacher_dir.parent.mkdir(parents=True)
        teacher_dir.symlink_to((root / args.teacher).resolve())
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.chdir(work)
    try:
        rows, total = [], 0.0
        tick = time.perf_counter()
        run_trajectories(params, layout)
        seconds = time.perf_counter() - tick
        total += seconds
        videos = params.trajectories.videos
        rows.append(("trajectories", f"{seconds:7.1f} s wall, {videos / seconds:.2f} videos/s "
                                     f"({videos} videos, {params.flow.steps} steps, CFG)"))
        for stage in ("semantic", "detail", "lcm", "pcm"):
            staged = params.with_overrides({stage: {"steps": args.steps}}) if args.steps else params
            tick = time.perf_counter()
            info = run_distill(staged, stage, layout)
            seconds = time.perf_counter() - tick
            total += seconds
            kind = "PE" if info["kind"] == "pe" else "full"
            extras = "".join(f", {name}" for name, on in (("GF", info["gf"]), ("TC", info["tc"])) if on)
            rows.append((stage, f"{seconds:7.1f} s wall, {info['seconds_per_step']:.3f} s/step "
                                f"({info['steps']} steps of batch {params.distill.batch_size}, {kind}{extras})"))
        rows.append(("total", f"{total:7.1f} s wall ({total / 60:.1f} min)"))
        teacher = load_backbone(teacher_dir)
        n_teacher = count_parameters(teacher.transformer.parameters())
        d = params.detail
        pe = ParameterEfficientExpert(teacher.transformer, teacher.timestep_layers, d.lora_rank, d.lora_alpha,
                                      d.lora_targets)
        n_pe = count_parameters(pe.trainable_parameters())
        rows.append(("teacher parameters", f"{n_teacher:,}"))
        rows.append(("detail expert trainable, PE", f"{n_pe:,} ({100 * n_pe / n_teacher:.1f}% of the teacher)"))
        rows.append(("detail expert trainable, OD", f"{n_teacher:,} (a second full copy)"))
        width = max(len(r[0]) for r in rows)
        print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    finally:
        os.chdir(root)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
