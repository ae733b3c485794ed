"""Distillation figures: trajectory throughput, seconds per training step of every stage, and
parameter counts (teacher; detail expert trainable with PE and with OD).

    python benchmarks/distill_bench.py [--params params.yaml] [--steps 6] [--videos 16] [--teacher DIR]

Runs in a temporary directory against the trained teacher in artifacts/teacher/model, with the
stage settings of the params file but only ``--steps`` steps per stage; prints one table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from dcm.config import load_params
from dcm.distill.experts import ParameterEfficientExpert, count_parameters
from dcm.models import load_backbone
from dcm.pipeline import run_distill, run_trajectories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=6, help="training steps per stage (the first is a warm-up)")
    parser.add_argument("--videos", type=int, default=16, help="trajectories to generate for the throughput figure")
    parser.add_argument("--teacher", default="artifacts/teacher/model", help="teacher directory (speed does not "
                        "depend on its weights: a random one built by `dcm` works too)")
    args = parser.parse_args()
    root = Path.cwd()
    base = load_params(args.params)
    teacher_dir = (root / args.teacher).resolve()
    work = Path(tempfile.mkdtemp(prefix="dcm-bench-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.chdir(work)
    try:
        rows = []
        params = base.with_overrides({"trajectories": {"videos": args.videos},
                                       "distill": {"checkpoint_every": 10**6, "bucket_every": 10**6}})
        tick = time.perf_counter()
        run_trajectories(params, teacher_dir, Path("artifacts/trajectories"))
        seconds = time.perf_counter() - tick
        rows.append(("trajectories", f"{args.videos / seconds:.2f} videos/s ({params.flow.steps} steps, CFG)"))
        for stage in ("semantic", "detail", "lcm", "pcm"):
            staged = params.with_overrides({stage: {"steps": args.steps}})
            info = run_distill(staged, stage, teacher_dir, Path("artifacts/trajectories"), Path("artifacts") / stage)
            rows.append((stage, f"{info['seconds_per_step']:.3f} s/step (batch {params.distill.batch_size}, "
                                f"{'PE' if info['kind'] == 'pe' else 'full'}{', GF' if info['gf'] else ''}"
                                f"{', TC' if info['tc'] else ''})"))
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
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
    finally:
        os.chdir(root)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
