"""Numbers behind the report's figures, computed from models and trajectories."""

from __future__ import annotations

import re
from collections import defaultdict

import torch

MODULE_TYPES = [  # (label, pattern on parameter names of a Wan transformer)
    ("timestep embedding", r"condition_embedder\.time_"),
    ("text embedding", r"condition_embedder\.text_"),
    ("self-attention", r"\.attn1\."),
    ("cross-attention", r"\.attn2\."),
    ("feed-forward", r"\.ffn\."),
    ("modulation", r"scale_shift_table"),
    ("norms", r"norm"),
    ("patch embedding", r"patch_embedding"),
    ("output projection", r"proj_out"),
]
def module_type(name: str) -> str:
    for label, pattern in MODULE_TYPES:
        if re.search(pattern, name):
            return label
    return "other"


def relative_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """``||a - b|| / ||b||`` per module type, over the parameters both share."""
    num, den = defaultdict(float), defaultdict(float)
    for name, tb in b.items():
        if name in a and a[name].shape == tb.shape:
            kind = module_type(name)
            num[kind] += float((a[name].double() - tb.double()).pow(2).sum())
            den[kind] += float(tb.double().pow(2).sum())
    return {k: (num[k] ** 0.5) / (den[k] ** 0.5) for k in num if den[k] > 0}


def adjacent_l1(latents: torch.Tensor, stored: list[int]) -> tuple[list[int], list[float]]:
    """Mean L1 distance between consecutive stored grid points, by the larger grid index."""
    pairs = [(j, stored[j], stored[j - 1]) for j in range(1, len(stored))]
    return [hi for _, hi, _ in pairs], [float((latents[:, j].float() - latents[:, j - 1].float()).abs().mean())
                                        for j, _, _ in pairs]
