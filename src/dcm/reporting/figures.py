"""Every figure dcm draws, saved atomically by :func:`save_figure` (PNG).

Analogs of the paper's figures: loss and gradient norm by noise level (Fig. 2), relative
parameter change by module type (Fig. 5), L1 distance between adjacent teacher steps and Total
against boundary (Fig. 10); and frame grids of samples, with an animated GIF.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import csv  # noqa: E402

import numpy as np  # noqa: E402

from dcm.io import atomic_path  # noqa: E402
from dcm.reporting.analysis import MODULE_TYPES  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def frame_grid(videos: list[np.ndarray], labels: list[str], path: Path, frames: int | None = None) -> None:
    """One row per video, one column per frame, the prompt above each row."""
    if not videos:
        raise ValueError("frame_grid needs at least one video")
    t = frames or videos[0].shape[0]
    fig, axes = plt.subplots(len(videos), t, figsize=(t * 1.0, len(videos) * 1.25), squeeze=False)
    for row, (video, label) in enumerate(zip(videos, labels, strict=True)):
        for col in range(t):
            ax = axes[row][col]
            ax.imshow(np.clip(video[col], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_title(label, fontsize=7, loc="left")
    fig.tight_layout(pad=0.3)
    save_figure(fig, path, dpi=100)


def accuracy_by_noise(rows: list[dict[str, float]], sampled: dict[str, float], path: Path) -> None:
    """The denoising probe: one line per attribute over the noise level, with the accuracy of
    videos sampled from pure noise as a dashed line in the same colour."""
    keys = [k for k in rows[0] if k.startswith("acc_")]
    sigmas = [r["sigma"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for key in keys:
        label = key.removeprefix("acc_")
        (line,) = ax.plot(sigmas, [r[key] for r in rows], "o-", label=f"{label}: one-step denoising")
        if label in sampled:
            ax.axhline(sampled[label], color=line.get_color(), linestyle="--", linewidth=1,
                       label=f"{label}: sampled from noise")
    ax.set_xlabel("noise level sigma of the held-out video")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Teacher: what one denoising step recovers, by noise level")
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


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
    save_figure(fig, path)

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
    save_figure(fig, path)

def fig_adjacent_l1(indices: list[int], distances: list[float], boundary: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(indices, distances, "o-", ms=3)
    ax.axvline(boundary, color="red", ls="--", label=f"boundary = {boundary}")
    ax.set_xlabel("grid index k (0 clean ... N noise)")
    ax.set_ylabel("mean |x_k - x_{k-1}|")
    ax.invert_xaxis()
    ax.set_title("L1 distance between adjacent teacher steps (cf. paper Fig. 10, left)")
    ax.legend()
    save_figure(fig, path)

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
    save_figure(fig, png)
    scale = 4
    tiles = []
    for t in range(frames):
        rows = [np.concatenate([videos[m][p][t] for m in methods], axis=1) for p in range(len(prompts))]
        mosaic = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
        tiles.append(Image.fromarray(mosaic).resize((mosaic.shape[1] * scale, mosaic.shape[0] * scale),
                                                     Image.NEAREST))
    with atomic_path(gif) as tmp:
        tiles[0].save(tmp, format="GIF", save_all=True, append_images=tiles[1:], duration=150, loop=0)

def boundary_plot(frame: pd.DataFrame, path: Path, steps: tuple[int, ...] = (4, 8)) -> None:
    """Total against boundary for the full method (paper Fig. 10, right)."""
    full = frame[frame.od & frame.pe & frame.tc & frame.gf] if not frame.empty else frame
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for k in steps:
        column = f"dcm_{k}/total"
        if not full.empty and column in full:
            points = full.dropna(subset=[column]).groupby("boundary")[column].first().sort_index()
            ax.plot(points.index, points.values, "o-", label=f"DCM, {k} steps")
    ax.set_xlabel("boundary (grid index)")
    ax.set_ylabel("Total (toy world)")
    ax.set_title("Total against boundary (cf. paper Fig. 10, right)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save_figure(fig, path)


def boundary_curves(suggestion, boundary: int, path: Path) -> None:
    """The boundary suggestion: normalised change by grid index and, for the toy world, the share of
    trajectories whose one-step estimate already shows each attribute of the final sample."""
    panels = 2 if suggestion.commitment else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    ax.plot(suggestion.indices, suggestion.normalised_change, "o-", ms=3)
    ax.set_ylabel("mean |x_k - x_{k-1}| / (sigma_k - sigma_{k-1})")
    ax.set_title("Normalised change of the teacher's steps")
    if suggestion.commitment:
        ax = axes[0][1]
        for name, values in suggestion.commitment.items():
            ax.plot(suggestion.indices, values, "-", lw=2.5 if name == "layout" else 1.2, label=name)
        ax.axhline(0.9, color="gray", ls=":", lw=1)
        ax.set_ylabel("share of trajectories committed")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("Commitment of the one-step estimate to the final sample")
        ax.legend(fontsize=7)
    for ax in axes[0]:
        ax.axvline(suggestion.boundary, color="red", ls="--", lw=1, label=f"suggested {suggestion.boundary}")
        if boundary != suggestion.boundary:
            ax.axvline(boundary, color="black", ls=":", lw=1, label=f"params boundary {boundary}")
        ax.set_xlabel("grid index k (0 clean ... N noise)")
        ax.invert_xaxis()
    save_figure(fig, path)


def validation_curves(curves: dict[str, pd.DataFrame], path: Path) -> None:
    """Each student's validation checks by training step, one panel per measure: the toy world's Total
    (flat at the end means trained enough), fidelity to the teacher's samples from the same noise, and the
    statistics of collapse as shares of the teacher's (solid colour, static, over-saturated output)."""
    panels = [(key, label) for key, label in (
        ("total", "Total (toy world, validation split)"), ("psnr", "PSNR to the teacher, dB"),
        ("ssim", "SSIM to the teacher"), ("frame_variance_ratio", "per-frame variance / teacher's"),
        ("frame_change_ratio", "frame-to-frame change / teacher's"), ("saturation_ratio", "saturation / teacher's"))
        if any(key in frame for frame in curves.values())]
    cols = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols / 1.4, 2.6 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        for stage, frame in curves.items():
            if key in frame:
                ax.plot(frame.step, frame[key], "o-", ms=3, label=stage)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel("training step of the student", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Students' validation checks (few-step samples)")
    save_figure(fig, path)
