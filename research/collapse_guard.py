"""Where the collapse guard's thresholds come from (``distill.collapse_*``): each student trained with
its default learning rate, and again with one 100x too high, with the guard off, checked every 25
steps on the validation set; the report lists what each run's checks reached.

A threshold is sound when every default run stays clear of it and the forced runs cross it.

    python research/collapse_guard.py run lcm-default lcm
    python research/collapse_guard.py run lcm-lr100x lcm --set lcm.lr=0.01
    python research/collapse_guard.py run detail-default detail --semantic semantic-default
    python research/collapse_guard.py report

Runs use the pipeline's trajectories (``artifacts/trajectories``) and the committed teacher, in
``artifacts/collapse_guard/<name>``; a killed run resumes with the same command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "research"))

from student_study import link, nested  # noqa: E402

STUDY_DIR = ROOT / "artifacts" / "collapse_guard"
OUT_DIR = ROOT / "reports" / "studies" / "collapse_guard"
REPORT = ROOT / "reports" / "studies" / "collapse_guard.md"
#: the guard off (every threshold 0), checks every 25 steps on 32 validation videos
SETTINGS = {"distill": {"validate_every": 25, "validate_videos": 32, "checkpoint_every": 100,
                        "collapse_variance_ratio": 0.0, "collapse_motion_ratio": 0.0, "collapse_psnr_drop": 0.0},
            "tracking": {"experiment": "dcm-collapse-guard"}}


def params_of(spec: dict):
    from dcm.config import load_params

    params = load_params(ROOT / "params.yaml").with_overrides(SETTINGS)
    if spec.get("semantic"):
        params = params.with_overrides(nested(json.loads((OUT_DIR / f"{spec['semantic']}.json").read_text())["sets"]))
    return params.with_overrides(nested(spec["sets"]))


def run(args: argparse.Namespace) -> None:
    from dcm.data.validation_set import ITEMS, make
    from dcm.distill.trainer import check_inputs, distill
    from dcm.layout import VALIDATION, Layout
    from dcm.models import load_backbone
    from dcm.tracking import stage_run

    torch.set_num_threads(args.threads)
    spec = {"stage": args.stage, "sets": args.set, "semantic": args.semantic}
    params = params_of(spec)
    root = STUDY_DIR / args.name
    link(ROOT / "artifacts" / "teacher", root / "artifacts" / "teacher")
    link(ROOT / "artifacts" / "trajectories", root / "artifacts" / "trajectories")
    validation = STUDY_DIR / "validation"
    if not (validation / ITEMS).exists():
        make(params, load_backbone(ROOT / "artifacts" / "teacher" / "model"), validation)
    link(validation, root / "artifacts" / "validation")
    if args.semantic:
        link(STUDY_DIR / args.semantic / "artifacts" / "semantic", root / "artifacts" / "semantic")
    check_inputs(params, args.stage, Layout(root))
    tick = time.perf_counter()
    with stage_run(args.stage, params, {"study.run": args.name}):
        distill(params, args.stage, Layout(root))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / "artifacts" / args.stage / VALIDATION, OUT_DIR / f"{args.name}.csv")
    (OUT_DIR / f"{args.name}.json").write_text(json.dumps(spec, indent=1) + "\n")
    print(f"{args.name}: done in {(time.perf_counter() - tick) / 60:.1f} min (this call)")


def report(_: argparse.Namespace) -> None:
    import pandas as pd

    from dcm.io import atomic_write_text

    rows = []
    for path in sorted(OUT_DIR.glob("*.csv")):
        spec = json.loads(path.with_suffix(".json").read_text())
        frame = pd.read_csv(path)
        trained = frame[frame.step > 0]
        best = frame.psnr.cummax()[frame.step > 0]  # the guard's reference: the best so far, step 0 included
        rows.append({"run": path.stem, "stage": spec["stage"], "settings": " ".join(spec["sets"]) or "defaults",
                     "checks": len(frame), "finite": int(frame.finite.min()),
                     "min variance ratio": frame.frame_variance_ratio.min(),
                     "min change ratio": frame.frame_change_ratio.min(),
                     "max saturation ratio": frame.saturation_ratio.max(),
                     "psnr start": frame.psnr.iloc[0], "psnr best": trained.psnr.max(),
                     "largest drop below best": (best - trained.psnr).max()})
    table = pd.DataFrame(rows)
    commands = [f"    python research/collapse_guard.py run {r['run']} {r['stage']} "
                + " ".join(f"--set {s}" for s in json.loads((OUT_DIR / f"{r['run']}.json").read_text())["sets"])
                for r in rows]
    text = "\n".join([
        "# Collapse guard: what default and forced-collapse runs reach", "",
        "Each student with its default learning rate, and with one 100x too high, the guard off, checked every "
        "25 steps on 32 validation videos (`research/collapse_guard.py`). Ratios are the student's few-step "
        "samples' statistic over the teacher's 50-step samples from the same noise; the drop is the largest "
        "fall of PSNR below its best so far (step 0, the untrained student, included), as the guard measures it.", "",
        table.to_markdown(index=False, floatfmt=".3f"), "", "Commands:", "", *commands, ""])
    atomic_write_text(REPORT, text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train one student with the guard off")
    p.add_argument("name")
    p.add_argument("stage", choices=("semantic", "detail", "lcm", "pcm"))
    p.add_argument("--set", action="append", default=[], help="key=value override of params.yaml")
    p.add_argument("--semantic", help="a finished semantic run (detail runs)")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=run)
    sub.add_parser("report", help="tabulate every finished run").set_defaults(fn=report)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
