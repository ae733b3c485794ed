"""How good is the teacher itself at few steps? The control that says whether distillation has
anything to do on a given sampling grid.

For each grid shift (``flow.shift``), the committed teacher samples the *validation* split with plain
Euler steps and its guidance (``trajectories.guidance_scale``): on its full ``flow.steps`` grid, and
on the students' schedules (``k`` steps uniform over the grid, or DCM's split at ``boundary``). Each
row is scored by the toy evaluator. Where the few-step rows already match the full grid, a
distilled student cannot show anything; the grid chosen for the pipeline is the one where they do
not. Nothing here reads the held-out split.

    python research/few_step_control.py --shifts 3,8,17 --videos 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "reports" / "studies" / "few_step_control.md"
COLUMNS = ("total", "quality", "semantic", "subject_consistency", "background_consistency", "temporal_flickering",
           "motion_smoothness", "detail", "object_class", "motion_direction")


def rows_for_shift(shift: float, videos: int, params, backbone, boundary: int | None) -> list[dict]:
    from dcm.data.splits import toy_items
    from dcm.data.trajectories import latent_shape
    from dcm.evaluation.samples import score_samples
    from dcm.sampling import Sampler, sample, schedule
    from dcm.world.render import to_video

    params = params.with_overrides({"flow": {"shift": shift}})
    n, k = params.flow.steps, params.boundary if boundary is None else boundary
    grid = backbone.sigma_grid(n, shift)
    items = toy_items("validation", videos)
    plans = [(f"teacher@{n}", list(range(n, -1, -1)))]
    plans += [(f"uniform@{s}", schedule("lcm", s, n, k)) for s in (1, 2, 4, 8)]
    plans += [(f"dcm-split@{s}", schedule("dcm", s, n, k)) for s in (2, 4)]
    out = []
    for name, indices in plans:
        sampler = Sampler(name, len(indices) - 1, [float(grid[i]) for i in indices],
                          params.trajectories.guidance_scale, backbone.transformer.eval())
        latents = sample(sampler, backbone, [p.text for p, _ in items], [s for _, s in items],
                         latent_shape(params, backbone))
        videos = [to_video(v) for v in backbone.decode_latents(latents)]
        scores = score_samples(videos, items, params.world.to_config()).aggregate
        sigmas = ", ".join(f"{grid[i]:.3f}" for i in indices) if len(indices) <= 9 else f"{n} grid steps"
        out.append({"shift": shift, "sampler": name, "sigmas": sigmas, **{c: scores[c] for c in COLUMNS}})
        print(", ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in out[-1].items()), flush=True)
    return out


def main(argv: list[str]) -> None:
    import pandas as pd

    from dcm.config import load_params
    from dcm.io import atomic_write_text
    from dcm.models import load_backbone

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shifts", default="3,8,17")
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--boundary", type=int, default=None, help="DCM split index (default: params.yaml's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_params(ROOT / "params.yaml")
    backbone = load_backbone(ROOT / "artifacts" / "teacher" / "model")
    rows = [r for shift in args.shifts.split(",") for r in rows_for_shift(float(shift), args.videos, params,
                                                                           backbone, args.boundary)]
    frame = pd.DataFrame(rows)
    lines = ["# The teacher at few steps (the control)", "",
             f"The committed teacher, plain Euler with guidance {params.trajectories.guidance_scale}, on "
             f"{args.videos} *validation* videos, scored by the toy evaluator; `uniform@k`: k steps spread over "
             f"the {params.flow.steps}-step grid (LCM's and PCM's schedule), `dcm-split@k`: k/2 steps on each "
             f"side of boundary {args.boundary if args.boundary is not None else params.boundary} (DCM's).",
             "Reproduce: `python research/few_step_control.py "
             f"--shifts {args.shifts} --videos {args.videos}`.", "",
             frame.to_markdown(index=False, floatfmt=".3f"), ""]
    atomic_write_text(REPORT, "\n".join(lines) + "\n")
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main(sys.argv[1:])
