"""How much the detail expert's score moves with its seed, with and without GAN + FM.

Trains the detail expert once per (ablation.gf, distill.seed) on the committed semantic expert,
under /tmp/dcm-seed-spread/ (not the stage folders), and scores DCM with the toy evaluator on
held-out videos, in memory. Prints one JSON line per run, then the mean and range per setting.

    python research/seed_spread.py [--seeds 0 1 2] [--gf on off] [--videos 32] [--steps 4 8]

Needs `dvc repro semantic` first; about 2.5 min per run on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dcm.config import load_params
from dcm.models import load_backbone
from dcm.layout import Layout
from dcm.stages.distill import run_distill
from dcm.sampling import sample
from dcm.students import load_sampler
from dcm.data.splits import toy_items
from dcm.data.trajectories import latent_shape
from dcm.evaluation.samples import score_samples
from dcm.world.render import to_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--videos", type=int, default=32, help="held-out videos scored per run")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--gf", choices=["on", "off"], nargs="+", default=["on", "off"],
                        help="GAN + feature matching settings to train")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dcm-seed-spread"))
    args = parser.parse_args()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{args.out.resolve()}/mlflow.db"  # keep these out of the project's runs
    args.out.mkdir(parents=True, exist_ok=True)

    base = load_params("params.yaml")
    backbone = load_backbone(Layout().teacher_model)
    items = toy_items("heldout", args.videos, 5)
    prompts, seeds = [p.text for p, _ in items], [s for _, s in items]
    results: dict[str, list[dict]] = {}
    for gf in (setting == "on" for setting in args.gf):
        for seed in args.seeds:
            params = base.with_overrides({"distill": {"seed": seed}, "ablation": {"gf": gf}})
            layout = Layout(args.out / f"gf{int(gf)}_seed{seed}")  # its own detail expert, the rest shared
            layout.artifacts.mkdir(parents=True, exist_ok=True)
            for shared in ("teacher", "trajectories", "semantic"):
                if not (layout.artifacts / shared).exists():
                    os.symlink((Layout().artifacts / shared).resolve(), layout.artifacts / shared)
            run_distill(params, "detail", layout)
            row = {"gf": gf, "seed": seed}
            for steps in args.steps:
                sampler = load_sampler("dcm", steps, backbone, params, layout)
                latents = sample(sampler, backbone, prompts, seeds, latent_shape(params, backbone))
                videos = [to_video(v) for v in backbone.decode_latents(latents)]
                scores = score_samples(videos, items, params.world.to_config()).aggregate
                row[f"dcm@{steps}"] = round(scores["total"], 4)
            print(json.dumps(row), flush=True)
            results.setdefault("PE + GF" if gf else "PE, no GF", []).append(row)
    for setting, rows in results.items():
        for steps in args.steps:
            values = [r[f"dcm@{steps}"] for r in rows]
            print(f"{setting:10s} DCM@{steps}: mean {sum(values) / len(values):.4f}, "
                  f"range {min(values):.4f}..{max(values):.4f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
