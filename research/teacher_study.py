"""The tiny teacher's recipe study: candidates trained from scratch at a fixed step budget.

Each candidate is ``params.yaml`` set back to the recipe the study started from (``STUDY_BASE``) plus a
few overrides (``CANDIDATES``), so a candidate means the same thing whatever params.yaml now holds;
it is trained by the same code
as the ``teacher`` stage (``dcm.teacher.train_teacher``), and checked every ``--eval-every`` steps
on the *validation* split: 20-step CFG samples scored per attribute by the toy evaluator, and
the prompt-swap probe. Runs checkpoint and resume, so a killed run is rerun with the same
command. ``report`` gathers every finished curve into ``reports/studies/teacher_recipe.md``.

    python research/teacher_study.py run coords_x0 --steps 3000 --threads 1
    python research/teacher_study.py guidance x0_pure25_big_shift1 --scales 1,2,3,4.5,6
    python research/teacher_study.py report

Two single-threaded runs side by side give a fair comparison on a 2-core machine.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
STUDY_DIR = ROOT / "artifacts" / "teacher_study"
CURVES_DIR = ROOT / "reports" / "studies" / "teacher_recipe"
REPORT = ROOT / "reports" / "studies" / "teacher_recipe.md"

# the recipe before the study: every candidate starts from it
STUDY_BASE = {
    "world": {"object_radius": 5.0, "speed_max": 2.0},
    "model": {"tiny": {"coordinate_channels": False, "prediction": "velocity"}},
    "teacher": {"loss": "velocity", "pure_noise_share": 0.0, "train_shift": None, "timestep_sampling": "uniform",
                "restarts": []},
}
# the committed teacher's recipe (params.yaml) as overrides of STUDY_BASE
COMMITTED_RECIPE = {
    "world": {"object_radius": 6.0, "speed_max": 1.6},
    "model": {"tiny": {"coordinate_channels": True, "prediction": "sample"}},
    "teacher": {"loss": "sample", "pure_noise_share": 0.25, "train_shift": 1.0, "timestep_sampling": "logit_normal"},
}

# name -> (what it tests, overrides of params.yaml)
CANDIDATES: dict[str, tuple[str, dict]] = {
    "baseline": ("the recipe committed before the study", {
        "model": {"tiny": {"coordinate_channels": False, "prediction": "velocity"}}}),
    "coords_v": ("coordinate channels (t, y, x) as extra input channels, velocity prediction", {
        "model": {"tiny": {"coordinate_channels": True, "prediction": "velocity"}}}),
    "coords_x0": ("coordinate channels, clean-sample prediction with the velocity loss", {
        "model": {"tiny": {"coordinate_channels": True, "prediction": "sample"}}}),
    "x0": ("clean-sample prediction with the velocity loss, no coordinates", {
        "model": {"tiny": {"coordinate_channels": False, "prediction": "sample"}}}),
    "edge_coords_v": ("world: objects start within 2 px of the edge they move away from; coordinates, velocity", {
        "world": {"edge_start": 2.0},
        "model": {"tiny": {"coordinate_channels": True, "prediction": "velocity"}}}),
    "edge_big_coords_v": ("world: edge starts, radius 6 (from 5), speed 1-1.6 px/frame (from 1-2); coordinates, "
                          "velocity", {
        "world": {"edge_start": 2.0, "object_radius": 6.0, "speed_max": 1.6},
        "model": {"tiny": {"coordinate_channels": True, "prediction": "velocity"}}}),
    "x0_shift8": ("coordinates, clean-sample prediction, training noise levels with shift 8 (35% of them above "
                  "sigma 0.95, from 14%): more training where motion is decided", {
        "model": {"tiny": {"coordinate_channels": True, "prediction": "sample"}}, "teacher": {"train_shift": 8.0}}),
    "x0_x0loss": ("coordinates, clean-sample prediction and clean-sample loss (every noise level weighs the same "
                  "in x0 error)", {
        "model": {"tiny": {"coordinate_channels": True, "prediction": "sample"}}, "teacher": {"loss": "sample"}}),
    "x0_pure25": ("coordinates, clean-sample prediction and loss, a quarter of every batch at sigma 1 exactly", {
        "model": {"tiny": {"coordinate_channels": True, "prediction": "sample"}},
        "teacher": {"loss": "sample", "pure_noise_share": 0.25}}),
    "x0_pure25_big": ("x0_pure25 in a world of bigger objects (radius 6 from 5, speed 1-1.6 px/frame from 1-2): "
                      "the shapes differ over 44% more pixels", {
        "world": {"object_radius": 6.0, "speed_max": 1.6},
        "model": {"tiny": {"coordinate_channels": True, "prediction": "sample"}},
        "teacher": {"loss": "sample", "pure_noise_share": 0.25}}),
    "x0_pure25_big_shift1": ("x0_pure25_big with unshifted training noise levels (shift 1 from 3): more training "
                             "at the middle noise levels where the outline is decided", {
        "world": {"object_radius": 6.0, "speed_max": 1.6},
        "model": {"tiny": {"coordinate_channels": True, "prediction": "sample"}},
        "teacher": {"loss": "sample", "pure_noise_share": 0.25, "train_shift": 1.0}}),
    "x0_pure25_big_logit": ("x0_pure25_big_shift1 with logit-normal noise levels (SD3's choice at low resolution): "
                            "most training near sigma 0.5, where the outline is decided (the committed teacher)",
                            COMMITTED_RECIPE),
    "x0_pure25_big_logit_long": ("x0_pure25_big_logit continued past its 3,000 steps (resumed from that run's "
                                 "checkpoint, before `teacher.restarts` existed: the cosine stretched to --steps 4500, "
                                 "so the rate rose to 35% of its peak; stopped at 3,500 to free the CPU)",
                                 COMMITTED_RECIPE),
    "logit_restart35": ("x0_pure25_big_logit continued from its 3,000-step checkpoint with a second cosine that "
                        "starts at 35% of the peak rate (`teacher.restarts: [3000]`)",
                        {**COMMITTED_RECIPE, "teacher": {**COMMITTED_RECIPE["teacher"], "restarts": [3000],
                                                         "restart_lr_ratio": 0.35}}),
    "logit_restart70": ("as logit_restart35 with the second cosine starting at 70% of the peak rate",
                        {**COMMITTED_RECIPE, "teacher": {**COMMITTED_RECIPE["teacher"], "restarts": [3000],
                                                         "restart_lr_ratio": 0.7}}),
    "frame_patch8": ("per-frame 8x8 patches (128 tokens, 192 values each), 6 layers of width 128, coordinates, "
                     "clean-sample prediction", {
        "model": {"tiny": {"patch_size": [1, 8, 8], "num_layers": 6, "coordinate_channels": True,
                           "prediction": "sample"}}}),
}
STUDY_STEPS = {"x0_pure25_big_logit_long": 4500, "logit_restart35": 5500, "logit_restart70": 5500}  # else 3000
# candidates that continue a finished candidate: their first call starts from a copy of its checkpoint
CONTINUES = {name: "x0_pure25_big_logit" for name in ("x0_pure25_big_logit_long", "logit_restart35", "logit_restart70")}


def candidate_params(name: str, steps: int, eval_every: int, eval_videos: int):
    from dcm.config import load_params

    if name not in CANDIDATES:
        raise SystemExit(f"unknown candidate {name!r}; known: {', '.join(CANDIDATES)}")
    overrides = CANDIDATES[name][1]
    teacher = {"steps": steps, "eval_every": eval_every, "eval_prompts": eval_videos, "checkpoint_every": 100}
    merged = {**overrides, "teacher": {**overrides.get("teacher", {}), **teacher},
              "tracking": {"experiment": "dcm-teacher-study"}}
    return load_params(ROOT / "params.yaml").with_overrides(STUDY_BASE).with_overrides(merged)


def run(args: argparse.Namespace) -> None:
    from dcm.layout import CHECKPOINT, VALIDATION
    from dcm.teacher.training import train_teacher
    from dcm.tracking import stage_run

    torch.set_num_threads(args.threads)
    params = candidate_params(args.name, args.steps, args.eval_every, args.eval_videos)
    out = STUDY_DIR / args.name
    if args.name in CONTINUES and not (out / CHECKPOINT).exists():
        parent = STUDY_DIR / CONTINUES[args.name] / CHECKPOINT
        if not parent.exists():
            raise SystemExit(f"{args.name} continues {CONTINUES[args.name]}: run that candidate first ({parent} is missing)")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(parent, out / CHECKPOINT)
    tick = time.perf_counter()
    with stage_run(f"teacher_study:{args.name}", params, {"study.candidate": args.name}):
        train_teacher(params, out)
    CURVES_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / VALIDATION, CURVES_DIR / f"{args.name}.csv")
    print(f"{args.name}: done in {(time.perf_counter() - tick) / 60:.1f} min (this call)")


def guidance(args: argparse.Namespace) -> None:
    """Choose the CFG scale of a trained candidate on the validation split (never the held-out one):
    50-step samples at each scale, scored per attribute; the winner has the best mean accuracy
    (the smaller scale on a tie)."""
    import pandas as pd

    from dcm.data.splits import toy_items
    from dcm.io import write_csv
    from dcm.models.tiny import load_tiny_backbone
    from dcm.teacher.probes import accuracy, sample_videos

    torch.set_num_threads(args.threads)
    params = candidate_params(args.name, STUDY_STEPS.get(args.name, 3000), 500, args.eval_videos)
    backbone = load_tiny_backbone(STUDY_DIR / args.name / "model")
    items = toy_items("validation", args.eval_videos)
    rows = []
    for scale in (float(s) for s in args.scales.split(",")):
        tick = time.perf_counter()
        videos = sample_videos(backbone, backbone.transformer, items, params, args.sample_steps, scale)
        acc = accuracy(videos, items, params)
        rows.append({"guidance_scale": scale, **acc, "mean": sum(acc.values()) / len(acc),
                     "seconds": round(time.perf_counter() - tick, 1)})
        print(", ".join(f"{k}={v:.3f}" for k, v in rows[-1].items()), flush=True)
    CURVES_DIR.mkdir(parents=True, exist_ok=True)
    write_csv(CURVES_DIR / f"guidance_{args.name}.csv", rows)
    best = max(rows, key=lambda r: (round(r["mean"], 6), -r["guidance_scale"]))
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"{args.name}: guidance scale {best['guidance_scale']} (validation mean accuracy {best['mean']:.3f})")


def report(_: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from dcm.io import atomic_write_text
    from dcm.reporting.figures import save_figure

    curves = {name: pd.read_csv(CURVES_DIR / f"{name}.csv") for name in CANDIDATES if (CURVES_DIR / f"{name}.csv").exists()}
    attributes = ("acc_color", "acc_object_class", "acc_motion_direction", "acc_scene")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
    for ax, attribute in zip(axes, attributes, strict=True):
        for name, frame in curves.items():
            ax.plot(frame.step, frame[attribute], "o-", ms=3, label=name)
        ax.set_title(attribute.removeprefix("acc_"))
        ax.set_xlabel("training step")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("validation accuracy (48 videos, 20 steps, CFG 3)")
    axes[-1].legend(fontsize=7)
    save_figure(fig, REPORT.with_suffix(".png"))
    lines = ["# Teacher recipe study", "",
             "Each candidate is `params.yaml` plus its overrides, trained from scratch by the `teacher` stage's",
             "code (batch 32, cosine schedule over the budget), one thread per run, two runs side by side. Every",
             "check samples 48 *validation* videos (seeds never used for training or for the held-out report)",
             "with 20 Euler steps and CFG 3 and scores them per attribute. `swap_<word>@<sigma>`: the prompt-swap",
             "probe (mean |change| of the one-step x0 estimate when one word is swapped); an exact model moves it",
             "at sigma 1 by about color 0.09, direction 0.07, shape 0.005, texture 0.007.", "",
             "![validation accuracy by training step](teacher_recipe.png)", ""]
    for name, frame in curves.items():
        what, overrides = CANDIDATES[name]
        flat = yaml.safe_dump(overrides, default_flow_style=True, width=1000).strip()
        lines += [f"## `{name}`: {what}", "",
                  f"`python research/teacher_study.py run {name} --steps {STUDY_STEPS.get(name, 3000)}` (overrides: `{flat}`)", "",
                  frame.to_markdown(index=False, floatfmt=".3f"), ""]
    for path in sorted(CURVES_DIR.glob("guidance_*.csv")):
        name = path.stem.removeprefix("guidance_")
        lines += [f"## Guidance scale of `{name}`, chosen on the validation split", "",
                  f"`python research/teacher_study.py guidance {name}`: 50-step samples of the same validation "
                  "videos at each scale; the best mean accuracy wins.", "",
                  pd.read_csv(path).to_markdown(index=False, floatfmt=".3f"), ""]
    atomic_write_text(REPORT, "\n".join(lines) + "\n")
    print(f"wrote {REPORT} and {REPORT.with_suffix('.png')}")


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one candidate (resumes if killed)")
    r.add_argument("name", choices=sorted(CANDIDATES))
    r.add_argument("--steps", type=int, default=3000)
    r.add_argument("--eval-every", type=int, default=500)
    r.add_argument("--eval-videos", type=int, default=48)
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(func=run)
    g = sub.add_parser("guidance", help="choose a trained candidate's CFG scale on the validation split")
    g.add_argument("name", choices=sorted(CANDIDATES))
    g.add_argument("--scales", default="1,2,3,4.5,6")
    g.add_argument("--sample-steps", type=int, default=50)
    g.add_argument("--eval-videos", type=int, default=48)
    g.add_argument("--threads", type=int, default=1)
    g.set_defaults(func=guidance)
    sub.add_parser("report", help=f"write {REPORT.relative_to(ROOT)} from the finished curves").set_defaults(
        func=report)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
