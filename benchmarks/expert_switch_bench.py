"""Where DCM's per-step overhead over LCM goes, and whether it is a fixed cost.

DCM samples with two experts; with PE (paper Sec. 3.3) the detail expert is a LoRA and copied
timestep layers on the semantic expert, so the semantic expert's attention projections carry PEFT's
LoRA wrappers (switched off during its steps) and the switch swaps merged weights in and out. LCM is
one plain transformer. This times, in interleaved rounds on the committed teacher (no trained students
needed: the cost does not depend on the LoRA's values), one transformer call of

* ``plain``: the transformer as LCM runs it;
* ``wrapped``: the same weights behind disabled LoRA wrappers (DCM's semantic steps);
* ``fused``: the detail expert with its LoRA merged in (DCM's detail steps);

and the switch itself (entering and leaving ``ParameterEfficientExpert.fused``), at several batch
sizes. A per-call overhead that stays the same in milliseconds while a call grows is a fixed cost
(Python dispatch), whose share shrinks as the work per call grows: at real size a call takes seconds.

    python benchmarks/expert_switch_bench.py [--batches 1 4 16] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch

from dcm.config import load_params
from dcm.experts import ParameterEfficientExpert
from dcm.layout import Layout
from dcm.models import load_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5, help="calls per timing (their median)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    params = load_params(args.params)
    backbone = load_backbone(Layout().teacher_model)
    plain = backbone.transformer.eval()
    d = params.detail
    expert = ParameterEfficientExpert(copy.deepcopy(plain), backbone.timestep_layers, d.lora_rank, d.lora_alpha,
                                      d.lora_targets).eval()
    w = params.world
    sigma = torch.tensor(0.5)
    print(f"{args.rounds} interleaved rounds, median of {args.calls} calls each, {args.threads} thread(s); "
          f"one transformer call (ms) and the ratio to plain")
    for batch in args.batches:
        x = torch.randn(batch, 3, w.frames, w.size, w.size)
        text = backbone.encode_prompts(["a red circle moving left on a stripes background"] * batch)

        def call(model) -> float:
            times = []
            with torch.no_grad():
                for _ in range(args.calls):
                    tick = time.perf_counter()
                    backbone.velocity(model, x, sigma, text)
                    times.append(time.perf_counter() - tick)
            return statistics.median(times)

        def fused_call() -> float:
            with expert.fused() as model:
                return call(model)

        def switch() -> float:
            tick = time.perf_counter()
            for _ in range(args.calls):
                with expert.fused():
                    pass
            return (time.perf_counter() - tick) / args.calls

        timers = {"plain": lambda: call(plain), "wrapped": lambda: call(expert.base), "fused": fused_call,
                  "switch": switch}
        for timer in timers.values():
            timer()  # warm-up
        rounds = {name: [] for name in timers}
        order = random.Random(0)
        for _ in range(args.rounds):
            names = list(timers)
            order.shuffle(names)
            for name in names:
                rounds[name].append(timers[name]())
        base = statistics.median(rounds["plain"])
        ratios = {name: statistics.median(a / b for a, b in zip(rounds[name], rounds["plain"], strict=True))
                  for name in ("wrapped", "fused")}
        extra = {name: statistics.median(a - b for a, b in zip(rounds[name], rounds["plain"], strict=True))
                 for name in ("wrapped", "fused")}
        switch_ms = statistics.median(rounds["switch"]) * 1e3
        print(f"  batch {batch:>3}: plain {base * 1e3:8.2f} ms | wrapped {ratios['wrapped']:.3f}x "
              f"(+{extra['wrapped'] * 1e3:.2f} ms) | fused {ratios['fused']:.3f}x (+{extra['fused'] * 1e3:.2f} ms) | "
              f"switch in and out {switch_ms:.3f} ms = {switch_ms / (base * 1e3) * 100:.2f}% of one call")


if __name__ == "__main__":
    main()
