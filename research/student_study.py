"""The students' study: learning rate, steps and trajectory count of every student, chosen on the
validation split with the same effort for every method.

Each run trains one student stage (``semantic``, ``detail``, ``lcm`` or ``pcm``) with the stage's own
code (``dcm.stages.distill.run_distill``) in its own folder, on the committed teacher and on a
shared set of teacher trajectories, and records the student's 4-step validation curve (the trainer's
``distill.validate_every`` check on the *validation* split, never the held-out one). A detail run
trains on top of a finished semantic run (``--semantic``), as the pipeline does. Runs checkpoint and
resume, so a killed run is rerun with the same command. ``report`` gathers every finished run into
``reports/studies/student_study.md`` and ``.png``.

    python research/student_study.py trajectories --videos 256
    python research/student_study.py run lcm-lr3e-5 lcm --set lcm.lr=3e-5 --set lcm.steps=1000
    python research/student_study.py run detail-lr1e-4 detail --semantic semantic-lr1e-4 --set detail.steps=600
    python research/student_study.py report

Two single-threaded runs side by side give a fair comparison on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
STUDY_DIR = ROOT / "artifacts" / "student_study"
CURVES_DIR = ROOT / "reports" / "studies" / "student_study"
REPORT = ROOT / "reports" / "studies" / "student_study.md"
STAGES = ("semantic", "detail", "lcm", "pcm")
# every run of the study: validation every 50 steps on 32 videos (the pipeline's default check is smaller)
STUDY_SETTINGS = {"distill": {"validate_every": 50, "validate_videos": 32, "checkpoint_every": 100},
                  "tracking": {"experiment": "dcm-student-study"}}


def nested(sets: list[str]) -> dict:
    """``["lcm.lr=3e-5", ...]`` -> ``{"lcm": {"lr": 3e-05}}`` (values read as YAML)."""
    out: dict = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        *sections, last = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = yaml.safe_load(value)
    return out


def run_params(spec: dict):
    """params.yaml with the study's settings, the trajectory count and the run's overrides (a detail
    run also takes its semantic run's, so the semantic expert's record matches)."""
    from dcm.config import load_params

    params = load_params(ROOT / "params.yaml").with_overrides(STUDY_SETTINGS)
    params = params.with_overrides({"trajectories": {"videos": spec["videos"]}})
    if spec.get("semantic"):
        params = params.with_overrides(nested(read_spec(spec["semantic"])["sets"]))
    return params.with_overrides(nested(spec["sets"]))


def read_spec(name: str) -> dict:
    path = CURVES_DIR / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"no study run named {name!r} ({path} is missing)")
    return json.loads(path.read_text())


def link(target: Path, at: Path) -> None:
    """A symlink ``at -> target`` (replacing an older one): study folders share the big inputs."""
    at.parent.mkdir(parents=True, exist_ok=True)
    if at.is_symlink() or at.exists():
        at.unlink()
    at.symlink_to(target.resolve(), target_is_directory=True)


def validation_set(params) -> Path:
    """The validation set every run is checked on (the ``validation`` stage's code), made once."""
    from dcm.data.validation_set import ITEMS, make
    from dcm.models import load_backbone

    out = STUDY_DIR / f"validation-{params.distill.validate_videos}"
    if not (out / ITEMS).exists():
        make(params, load_backbone(ROOT / "artifacts" / "teacher" / "model"), out)
    return out


def trajectories_dir(videos: int) -> Path:
    return STUDY_DIR / f"trajectories-{videos}"


def trajectories(args: argparse.Namespace) -> None:
    """Generate ``--videos`` teacher trajectories (params.yaml's guidance and seed) into the study folder."""
    from dcm.config import load_params
    from dcm.layout import Layout
    from dcm.stages.trajectories import run_trajectories

    torch.set_num_threads(args.threads)
    root = STUDY_DIR / f"trajectories-root-{args.videos}"
    link(ROOT / "artifacts" / "teacher", root / "artifacts" / "teacher")
    trajectories_dir(args.videos).mkdir(parents=True, exist_ok=True)
    link(trajectories_dir(args.videos), root / "artifacts" / "trajectories")
    params = load_params(ROOT / "params.yaml").with_overrides(
        {"trajectories": {"videos": args.videos}, **{"tracking": STUDY_SETTINGS["tracking"]}})
    tick = time.perf_counter()
    run_trajectories(params, Layout(root))
    print(f"trajectories-{args.videos}: {(time.perf_counter() - tick) / 60:.1f} min (this call)")


def run(args: argparse.Namespace) -> None:
    from dcm.distill.trainer import check_inputs, distill
    from dcm.layout import VALIDATION, Layout
    from dcm.tracking import stage_run

    torch.set_num_threads(args.threads)
    spec = {"stage": args.stage, "sets": args.set, "videos": args.videos, "semantic": args.semantic}
    if (args.stage == "detail") != bool(args.semantic):
        raise SystemExit("a detail run needs --semantic NAME (a finished semantic run); other stages take none")
    CURVES_DIR.mkdir(parents=True, exist_ok=True)
    spec_path = CURVES_DIR / f"{args.name}.json"
    if spec_path.exists() and json.loads(spec_path.read_text())["sets"] != args.set:
        raise SystemExit(f"{args.name} was run with other settings ({spec_path}); pick another name")
    params = run_params(spec)
    root = STUDY_DIR / args.name
    link(ROOT / "artifacts" / "teacher", root / "artifacts" / "teacher")
    if not (trajectories_dir(args.videos) / "manifest.json").exists():
        raise SystemExit(f"run `python research/student_study.py trajectories --videos {args.videos}` first")
    link(trajectories_dir(args.videos), root / "artifacts" / "trajectories")
    if args.semantic:
        link(STUDY_DIR / args.semantic / "artifacts" / "semantic", root / "artifacts" / "semantic")
    link(validation_set(params), root / "artifacts" / "validation")
    spec_path.write_text(json.dumps(spec, indent=1) + "\n")
    check_inputs(params, args.stage, Layout(root))
    tick = time.perf_counter()
    with stage_run(args.stage, params, {"study.run": args.name}) as mlflow_run:
        summary = distill(params, args.stage, Layout(root))
    out = root / "artifacts" / args.stage
    shutil.copyfile(out / VALIDATION, CURVES_DIR / f"{args.name}.csv")
    spec["seconds_per_step"] = summary.get("seconds_per_step")
    spec["loss_terms"] = loss_terms(mlflow_run.info.run_id)
    spec_path.write_text(json.dumps(spec, indent=1) + "\n")
    print(f"{args.name}: done in {(time.perf_counter() - tick) / 60:.1f} min (this call)")


LOSS_TERMS = ("loss_consistency", "loss_tc", "loss_g", "g_scale", "loss_fm", "loss_d", "grad_norm")


def loss_terms(run_id: str) -> dict[str, float]:
    """Mean of each logged loss term over the second half of training (its scale once settled)."""
    from mlflow.tracking import MlflowClient

    client, out = MlflowClient(), {}
    for key in LOSS_TERMS:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        if history:
            half = [m.value for m in history if m.step > history[-1].step / 2]
            out[key] = sum(half) / len(half)
    return out


def command(name: str, spec: dict) -> str:
    parts = ["python research/student_study.py run", name, spec["stage"]]
    if spec["semantic"]:
        parts += ["--semantic", spec["semantic"]]
    if spec["videos"] != 64:
        parts += ["--videos", str(spec["videos"])]
    parts += [f"--set {s}" for s in spec["sets"]]
    return " ".join(parts)


def summarise(frame, window: int = 3) -> dict:
    """Start, best, and the mean of the last ``window`` checks, and whether the curve has flattened:
    the mean of the last ``window`` checks within 0.01 of the ``window`` before them."""
    last = frame.total.iloc[-window:].mean()
    before = frame.total.iloc[-2 * window:-window].mean() if len(frame) >= 2 * window else float("nan")
    return {"steps": int(frame.step.iloc[-1]), "start": frame.total.iloc[0], "best": frame.total.max(),
            "best_step": int(frame.step.iloc[frame.total.values.argmax()]),
            "best3": best_window(frame, window)[0], "best3_step": best_window(frame, window)[1], f"last{window}": last,
            "change": last - before, "flat": bool(abs(last - before) <= 0.01)}


def best_window(frame, window: int = 3) -> tuple[float, int]:
    """The highest mean of ``window`` consecutive checks, and the step at its centre: the selection
    rule (one check of 32 videos is too noisy to pick a step count by)."""
    smooth = frame.total.rolling(window, center=True).mean()
    if smooth.isna().all():
        return float(frame.total.mean()), int(frame.step.iloc[-1])
    at = int(smooth.values.argmax() if not smooth.isna().any() else smooth.fillna(-1).values.argmax())
    return float(smooth.iloc[at]), int(frame.step.iloc[at])


def report(_: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from dcm.io import atomic_write_text
    from dcm.reporting.figures import save_figure

    specs = {p.stem: json.loads(p.read_text()) for p in sorted(CURVES_DIR.glob("*.json"))
             if (CURVES_DIR / f"{p.stem}.csv").exists()}
    curves = {name: pd.read_csv(CURVES_DIR / f"{name}.csv") for name in specs}
    stages = [s for s in STAGES if any(spec["stage"] == s for spec in specs.values())]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(4.4 * max(1, len(stages)), 3.6), sharey=True,
                             squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=False):
        for name, frame in curves.items():
            if specs[name]["stage"] == stage:
                ax.plot(frame.step, frame.total, "o-", ms=2, label=name)
        ax.set_title(stage)
        ax.set_xlabel("training step")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("Total, 4-step samples of 32 validation videos")
    save_figure(fig, REPORT.with_suffix(".png"))
    rows, scales = [], []
    for name, frame in curves.items():
        spec = specs[name]
        rows.append({"run": name, "stage": spec["stage"], "trajectories": spec["videos"],
                     "s/step": spec.get("seconds_per_step"), **summarise(frame)})
        if spec.get("loss_terms", {}).get("loss_g") is not None:
            terms = spec["loss_terms"]
            scales.append({"run": name, "consistency": terms["loss_consistency"],
                           "G (weighted)": terms["g_scale"] * terms["loss_g"], "G weight": terms["g_scale"],
                           "FM": terms.get("loss_fm"), "D": terms.get("loss_d"), "grad norm": terms.get("grad_norm")})
    table = pd.DataFrame(rows).sort_values(["stage", "run"])
    chosen = table.loc[table.groupby("stage").best3.idxmax()][["stage", "run", "best3", "best3_step", "start"]]
    lines = ["# Student study", "",
             "Each run trains one student with the stage's own code on the committed teacher, one thread per",
             "run, two runs side by side, and checks it every 50 steps: 4-step samples (the pipeline's",
             "schedules; the semantic expert followed by the guided teacher, the detail expert after its",
             "semantic expert) of 32 *validation* videos, scored by the toy evaluator. Nothing here looks at",
             "the held-out split. `last3`: mean of the last three checks; `change`: that minus the three",
             "before; `flat`: |change| <= 0.01. `best3`: the highest mean of three consecutive checks, and",
             "`best3_step` the step at its centre. The rule: each stage takes the run and step of its highest",
             "`best3` (one check of 32 videos is too noisy to choose by; `start` is the untrained student).", "",
             chosen.to_markdown(index=False, floatfmt=".3f"), "",
             "![validation curves](student_study.png)", "",
             table.to_markdown(index=False, floatfmt=".3f"), ""]
    if scales:
        lines += ["## Loss terms of the detail expert", "",
                  "Mean over the second half of training of each term as it enters the generator's loss (the G",
                  "hinge times its weight; FM before `detail.fm_weight`), the discriminator's hinge, and the",
                  "gradient norm before clipping.", "",
                  pd.DataFrame(scales).to_markdown(index=False, floatfmt=".4g"), ""]
    lines += ["## Commands", ""]
    lines += [f"- `{name}`: `{command(name, specs[name])}`" for name in table.run]
    atomic_write_text(REPORT, "\n".join(lines) + "\n")
    print(table.to_string(index=False))
    print("chosen:\n" + chosen.to_string(index=False))
    print(f"wrote {REPORT} and {REPORT.with_suffix('.png')}")


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.chdir(ROOT)  # the MLflow store and params.yaml of the repository
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trajectories", help="generate a set of teacher trajectories for the study")
    t.add_argument("--videos", type=int, default=64)
    t.add_argument("--threads", type=int, default=1)
    t.set_defaults(func=trajectories)
    r = sub.add_parser("run", help="train one student (resumes if killed)")
    r.add_argument("name")
    r.add_argument("stage", choices=STAGES)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override")
    r.add_argument("--videos", type=int, default=64, help="trajectories to train on")
    r.add_argument("--semantic", help="detail runs: the semantic run to build on")
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(func=run)
    sub.add_parser("report", help=f"write {REPORT.relative_to(ROOT)} from the finished runs").set_defaults(
        func=report)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
