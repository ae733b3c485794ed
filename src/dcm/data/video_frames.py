"""One training clip from one video file: decode, choose the frames, fit them to the model's size.

Any container and codec FFmpeg reads (through PyAV) is accepted. Frames are chosen in one of two
ways (:func:`frame_indices`): without a target frame rate, the first ``frames`` frames at the
source rate; with one, every ``source_fps / fps``-th frame from the first (rounded to the nearest
frame), so the clip spans the same time at any source rate. Each chosen frame is scaled, keeping
its aspect, until it covers ``(height, width)``, then centre-cropped to it: no padding and no
distortion, as diffusers' training examples do. Decoding stops at the last frame needed.

A file that cannot be used is not an exception but a :class:`Skip` with its reason, so a dataset
stage can count and report every such file and carry on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import torch
from torch.nn import functional as F

SkipReason = Literal["missing", "unreadable", "too_short", "low_fps"]


@dataclass(frozen=True)
class Skip:
    """Why a video file gives no clip: ``reason`` (one of :data:`SkipReason`) and the details."""

    reason: SkipReason
    detail: str


def frame_indices(frames: int, source_fps: float | None, fps: float | None) -> list[int] | Skip:
    """Source frame indices of the clip, or why the source rate cannot give ``fps``.

    ``fps`` None: the first ``frames`` frames. Otherwise frame ``k`` is source frame
    ``round(k * source_fps / fps)``; a source slower than ``fps`` would repeat frames and is refused.
    """
    if fps is None:
        return list(range(frames))
    if not source_fps:
        return Skip("unreadable", f"its frame rate is unknown, so it cannot be sampled at {fps:g} fps")
    stride = source_fps / fps
    indices = [round(k * stride) for k in range(frames)]
    if len(set(indices)) < frames:
        return Skip("low_fps", f"{source_fps:.3g} fps is below the {fps:g} fps asked for")
    return indices


def cover_and_crop(frame: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(3, h, w)`` floats scaled (aspect kept, antialiased bilinear) to cover ``(height, width)``,
    then centre-cropped to it."""
    _, h, w = frame.shape
    scale = max(height / h, width / w)
    size = (max(height, math.ceil(h * scale - 1e-6)), max(width, math.ceil(w * scale - 1e-6)))
    if size != (h, w):
        frame = F.interpolate(frame[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return frame[:, top:top + height, left:left + width]


def read_clip(path: str | Path, frames: int, height: int, width: int, fps: float | None = None) -> torch.Tensor | Skip:
    """The clip of ``path`` as ``(3, frames, height, width)`` float32 in [-1, 1], or the :class:`Skip`
    that says why there is none (missing file, undecodable, too short, too slow for ``fps``)."""
    path = Path(path)
    if not path.is_file():
        return Skip("missing", "no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return Skip("unreadable", "it holds no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            indices = frame_indices(frames, float(rate) if rate else None, fps)
            if isinstance(indices, Skip):
                return indices
            wanted, chosen, decoded = set(indices), {}, 0
            for frame in container.decode(stream):
                if decoded in wanted:
                    pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float()
                    chosen[decoded] = cover_and_crop(pixels, height, width)
                decoded += 1
                if decoded > indices[-1]:
                    break
    except av.FFmpegError as err:
        return Skip("unreadable", f"FFmpeg cannot decode it ({err})")
    if decoded == 0:
        return Skip("unreadable", "not one frame decodes")
    if decoded <= indices[-1]:
        need = f"the {indices[-1] + 1} needed" if fps is None else \
            f"the {indices[-1] + 1} that {frames} frames at {fps:g} fps need"
        return Skip("too_short", f"it has {decoded} frames, fewer than {need}")
    clip = torch.stack([chosen[i] for i in indices], dim=1)
    return clip.div(127.5).sub(1).clamp(-1, 1)

