"""Fidelity to the teacher: PSNR and SSIM of each video against the teacher's video from the same
prompt and seed (hence the same initial noise)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7, sigma: float = 1.5) -> float:
    """Mean SSIM over frames and channels (Gaussian window, values in [0, 1])."""
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).double()
    y = torch.from_numpy(np.ascontiguousarray(b)).permute(0, 3, 1, 2).double()
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None]).expand(x.shape[1], 1, window, window).contiguous()

    def blur(t):
        return F.conv2d(t, kernel, groups=t.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


#: PSNR above this counts as this: the difference is invisible, and a student still identical to the
#: teacher (sampled on the teacher's own schedule, where the grid is that short) would be infinitely far
#: above any later check
PSNR_CAP = 40.0


def video_statistics(video: np.ndarray) -> dict[str, float]:
    """What collapsed output lacks, for one video ``(T, H, W, 3)`` in [0, 1]: colour saturation
    (HSV's, over-saturation raises it), frame-to-frame change (static output has none) and per-frame
    variance (solid colour has none; flashing output keeps it but changes wildly between frames)."""
    v = video.astype(np.float64)
    high, low = v.max(axis=-1), v.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0.0)
    return {"saturation": float(saturation.mean()),
            "frame_change": float(np.abs(np.diff(v, axis=0)).mean()) if len(v) > 1 else 0.0,
            "frame_variance": float(v.reshape(len(v), -1).var(axis=1).mean())}


def fidelity_to_teacher(videos: list[np.ndarray], teacher: list[np.ndarray]) -> dict[str, float]:
    """Mean PSNR and SSIM of ``videos`` against the teacher's from the same noise, their statistics
    (:func:`video_statistics`, means over videos) and each statistic as a share of the teacher's."""
    if len(videos) != len(teacher):
        raise ValueError(f"{len(videos)} videos against {len(teacher)} teacher videos")
    out = {"psnr": float(np.mean([min(psnr(a, b), PSNR_CAP) for a, b in zip(videos, teacher, strict=True)])),
           "ssim": float(np.mean([ssim(a, b) for a, b in zip(videos, teacher, strict=True)]))}
    mine = [video_statistics(v) for v in videos]
    theirs = [video_statistics(v) for v in teacher]
    for key in mine[0]:
        student_mean, teacher_mean = np.mean([m[key] for m in mine]), np.mean([t[key] for t in theirs])
        out[key] = float(student_mean)
        out[f"{key}_ratio"] = float(student_mean / teacher_mean) if teacher_mean > 0 else float("nan")
    return out
