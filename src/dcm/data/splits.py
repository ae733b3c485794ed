"""Every seed split in one place: which ``(prompt, seed)`` pairs train, validate and test.

A video is fixed by its prompt and its seed (the toy world's layout, or a real model's initial
noise), so the splits are ranges of seeds:

* ``train``: ``[0, 2**31)``. The teacher draws its training videos uniformly from this range;
  distillation trajectories use ``[2**30, 2**31)`` offset by ``trajectories.seed``.
* ``validation``: ``[2**31 + 2**30, ...)``. Choosing anything (a teacher recipe, a guidance
  scale, a student's learning rate or step count) is done on this split.
* ``heldout``: ``[2**31, 2**31 + 2**30)``. Scored once per configuration (``teacher_eval`` uses
  set 0, ``sample`` set 1), never used to choose.

Within validation and held-out, set ``k`` holds seeds ``base + k * 100_000 + i``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from dcm.world.grammar import Prompt, all_prompts

TRAIN_SEED_END = 2**31
DISTILL_SEED_BASE = 2**30
HELDOUT_SEED_BASE = 2**31
VALIDATION_SEED_BASE = 2**31 + 2**30
SET_STRIDE = 100_000
MAX_SET = 2**30 // SET_STRIDE - 1

Split = Literal["validation", "heldout"]


def split_seeds(split: Split, videos: int, set_index: int = 0) -> list[int]:
    """``videos`` seeds of set ``set_index`` of an evaluation split."""
    if not 0 <= set_index <= MAX_SET:
        raise ValueError(f"seed set {set_index} is outside [0, {MAX_SET}]")
    if videos > SET_STRIDE:
        raise ValueError(f"a seed set holds at most {SET_STRIDE} videos, asked for {videos}")
    base = {"validation": VALIDATION_SEED_BASE, "heldout": HELDOUT_SEED_BASE}[split]
    return [base + set_index * SET_STRIDE + i for i in range(videos)]


def toy_items(split: Split, videos: int, set_index: int = 0) -> list[tuple[Prompt, int]]:
    """``videos`` toy ``(prompt, seed)`` pairs: every prompt in turn (shuffled per set), so any
    64 of them cover every attribute value; seeds from the split."""
    prompts = all_prompts()
    order = np.random.default_rng(set_index).permutation(len(prompts))
    seeds = split_seeds(split, videos, set_index)
    return [(prompts[order[i % len(prompts)]], seed) for i, seed in enumerate(seeds)]


def distill_seeds(videos: int, seed: int) -> list[int]:
    """Seeds of the distillation trajectories: training range, apart from the teacher's usual draws."""
    return [DISTILL_SEED_BASE + seed * 1_000_000 + i for i in range(videos)]
