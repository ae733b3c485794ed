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
