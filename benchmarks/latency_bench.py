"""Per-step cost of DCM against LCM and PCM, timed in interleaved rounds.

The sample stage times each method in its own block, so slow drift of the machine (other
processes, frequency) lands on whichever method ran then. Here every round times every
(method, steps) once, in a shuffled order, on the same batch, so drift is shared; the figures
are medians over the rounds.

    python benchmarks/latency_bench.py [--steps 4 8] [--rounds 30] [--batch 4] [--teacher-rounds 3]

Needs the trained students under artifacts/ (`dvc repro sample` first).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from dcm.config import load_params
from dcm.models import load_backbone
from dcm.data.prompts import sample_items
from dcm.data.trajectories import latent_shape
from dcm.layout import Layout
from dcm.sampling import sample
from dcm.students import load_sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--methods", nargs="+", default=["lcm", "pcm", "dcm"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--teacher-rounds", type=int, default=3, help="timed teacher batches (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the round order")
    args = parser.parse_args()

    params = load_params(args.params)
    backbone = load_backbone(Layout().teacher_model)
    prompts, seeds, _ = sample_items(params)
    prompts, seeds = prompts[:args.batch], seeds[:args.batch]
    shape = latent_shape(params, backbone)
    generators = {(m, k): load_sampler(m, k, backbone, params)
                  for m in args.methods for k in args.steps}

    def timed(gen) -> float:
        tick = time.perf_counter()
        sample(gen, backbone, prompts, seeds, shape, len(prompts))
        return (time.perf_counter() - tick) / len(prompts)

    for gen in generators.values():  # warm-up
        timed(gen)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in generators}
    order = random.Random(args.seed)
    for _ in range(args.rounds):
        keys = list(generators)
        order.shuffle(keys)
        for key in keys:
            times[key].append(timed(generators[key]))

    print(f"{args.rounds} interleaved rounds, batch {len(prompts)}, one process, "
          f"backbone {params.model.backbone}; seconds per video (median [quartiles])")
    median = {}
    for (method, k), values in sorted(times.items()):
        q1, med, q3 = statistics.quantiles(values, n=4)
        median[method, k] = med
        print(f"  {method}@{k:<3} {med:.5f} [{q1:.5f} {q3:.5f}]   per step {med / k:.5f}")
    for k in args.steps:
        if ("dcm", k) in median and ("lcm", k) in median:
            paired = [d / lcm for d, lcm in zip(times["dcm", k], times["lcm", k], strict=True)]
            print(f"  dcm/lcm per-step cost at {k} steps: {median['dcm', k] / median['lcm', k]:.3f} "
                  f"(median of per-round ratios {statistics.median(paired):.3f})")
    if args.teacher_rounds:
        teacher = load_sampler("teacher", params.flow.steps, backbone, params)
        timed(teacher)
        t = statistics.median(timed(teacher) for _ in range(args.teacher_rounds))
        print(f"  teacher@{params.flow.steps} {t:.4f} s per video")
        for k in args.steps:
            if ("dcm", k) in median:
                print(f"  dcm@{k} speedup over the teacher: {t / median['dcm', k]:.1f}x")


if __name__ == "__main__":
    main()
