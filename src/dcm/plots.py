"""Figures people would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dcm.io import atomic_path  # noqa: E402


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
