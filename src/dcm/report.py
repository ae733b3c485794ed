"""The report stage: the paper's tables and analysis figures, from this pipeline's outputs.

* Table 1 analog: method x steps x latency x scores, from ``reports/metrics.json``.
* Table 3 analog: DCM's scores per ablation setting, from the ``evaluate`` runs in MLflow.
* Fig. 2: loss and gradient norm by noise level of a single model over the whole trajectory.
* Fig. 10 (left): L1 distance between adjacent teacher steps, with the boundary marked.
* Fig. 5: relative parameter change by module type between full models.
* A side-by-side grid (PNG and GIF) of teacher, LCM, PCM and DCM frames at 4 steps.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dcm.io import atomic_path  # noqa: E402

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
ABLATION_ROWS = [  # Table 3 of the paper, in order
    ("none", (False, False, False, False)),
    ("OD", (True, False, False, False)),
    ("OD+PE", (True, True, False, False)),
    ("OD+PE+TC", (True, True, True, False)),
    ("OD+PE+GF", (True, True, False, True)),
    ("OD+PE+TC+GF", (True, True, True, True)),
]


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


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


def fig_parameter_change(pairs: dict[str, dict[str, float]], path: Path) -> None:
    kinds = [label for label, _ in MODULE_TYPES if any(label in p for p in pairs.values())]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(1, len(pairs))
    for j, (name, change) in enumerate(pairs.items()):
        ax.bar(np.arange(len(kinds)) + j * width, [change.get(k, 0.0) for k in kinds], width, label=name)
    ax.set_xticks(np.arange(len(kinds)) + width * (len(pairs) - 1) / 2)
    ax.set_xticklabels(kinds, rotation=30, ha="right")
    ax.set_ylabel("relative parameter change")
    ax.set_title("Relative parameter change by module type (cf. paper Fig. 5)")
    ax.legend(fontsize=8)
    _save(fig, path)


def fig_noise_levels(buckets_csv: Path, path: Path, title: str) -> None:
    with buckets_csv.open() as fh:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    steps = sorted({r["step"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for step in (steps[0], steps[-1]):
        chosen = sorted((r for r in rows if r["step"] == step), key=lambda r: r["sigma_low"])
        mids = [(r["sigma_low"] + r["sigma_high"]) / 2 for r in chosen]
        axes[0].plot(mids, [r["loss"] for r in chosen], "o-", label=f"step {int(step)}")
        axes[1].plot(mids, [r["grad_norm"] for r in chosen], "o-", label=f"step {int(step)}")
    for ax, label in zip(axes, ("consistency loss", "gradient norm"), strict=True):
        ax.set_xlabel("noise level sigma (bucket centre)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: loss and gradient norm by noise level (cf. paper Fig. 2)")
    _save(fig, path)


def adjacent_l1(latents: torch.Tensor, stored: list[int]) -> tuple[list[int], list[float]]:
    """Mean L1 distance between consecutive stored grid points, by the larger grid index."""
    pairs = [(j, stored[j], stored[j - 1]) for j in range(1, len(stored))]
    return [hi for _, hi, _ in pairs], [float((latents[:, j].float() - latents[:, j - 1].float()).abs().mean())
                                        for j, _, _ in pairs]


def fig_adjacent_l1(indices: list[int], distances: list[float], boundary: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(indices, distances, "o-", ms=3)
    ax.axvline(boundary, color="red", ls="--", label=f"boundary = {boundary}")
    ax.set_xlabel("grid index k (0 clean ... N noise)")
    ax.set_ylabel("mean |x_k - x_{k-1}|")
    ax.invert_xaxis()
    ax.set_title("L1 distance between adjacent teacher steps (cf. paper Fig. 10, left)")
    ax.legend()
    _save(fig, path)


def method_grid(videos: dict[str, list[np.ndarray]], prompts: list[str], png: Path, gif: Path) -> None:
    """Rows: prompt x method; columns: frames. Also an animated GIF of the same mosaic."""
    from PIL import Image

    methods = list(videos)
    frames = videos[methods[0]][0].shape[0]
    fig, axes = plt.subplots(len(prompts) * len(methods), frames,
                             figsize=(frames * 0.9, len(prompts) * len(methods) * 0.95), squeeze=False)
    for p, prompt in enumerate(prompts):
        for m, method in enumerate(methods):
            row = p * len(methods) + m
            for t in range(frames):
                ax = axes[row][t]
                ax.imshow(np.clip(videos[method][p][t], 0, 1), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if t == 0:
                    ax.set_ylabel(method, fontsize=7, rotation=0, ha="right", va="center")
        axes[p * len(methods)][0].set_title(prompt, fontsize=7, loc="left")
    fig.tight_layout(pad=0.2)
    _save(fig, png)
    scale = 4
    tiles = []
    for t in range(frames):
        rows = [np.concatenate([videos[m][p][t] for m in methods], axis=1) for p in range(len(prompts))]
        mosaic = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
        tiles.append(Image.fromarray(mosaic).resize((mosaic.shape[1] * scale, mosaic.shape[0] * scale),
                                                     Image.NEAREST))
    with atomic_path(gif) as tmp:
        tiles[0].save(tmp, format="GIF", save_all=True, append_images=tiles[1:], duration=150, loop=0)


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def research_bar(metrics: dict[str, dict], teacher_key: str) -> list[list[str]]:
    """The paper's claims as checks on this run: (claim, measured, holds?). Totals are on a 0-1
    scale, so the paper's "1 point" is 0.01; a claim whose methods were not sampled is skipped."""
    rows = []

    def total(key: str) -> float | None:
        return metrics.get(key, {}).get("total")

    for k in (4, 8):
        dcm, pcm, lcm = total(f"dcm@{k}"), total(f"pcm@{k}"), total(f"lcm@{k}")
        if None not in (dcm, pcm, lcm):
            rows.append([f"{k} steps: Total DCM >= PCM >= LCM", f"{dcm:.4f} / {pcm:.4f} / {lcm:.4f}",
                         _holds(dcm >= pcm >= lcm)])
    dcm4, teacher = total("dcm@4"), total(teacher_key)
    if None not in (dcm4, teacher):
        rows.append([f"DCM@4 Total within 0.01 of the teacher's ({teacher_key})",
                     f"{dcm4:.4f} vs {teacher:.4f} (gap {teacher - dcm4:+.4f})", _holds(teacher - dcm4 <= 0.01 + 1e-9)])
    speedup = metrics.get("dcm@4", {}).get("speedup_vs_teacher")
    if speedup is not None:
        rows.append(["DCM@4 at least 20x faster than the teacher", f"{speedup:.1f}x", _holds(speedup >= 20)])
    for k in (4, 8):
        dcm, lcm = metrics.get(f"dcm@{k}", {}).get("per_step_s"), metrics.get(f"lcm@{k}", {}).get("per_step_s")
        if None not in (dcm, lcm):
            rows.append([f"{k} steps: DCM per-step cost within 2% of LCM's", f"{dcm / lcm:.3f}x",
                         _holds(dcm / lcm <= 1.02)])
    return rows


def _holds(ok: bool) -> str:
    return "yes" if ok else "**no**"
