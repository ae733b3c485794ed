"""Scoring sample directories: the toy world's analytic scores, fidelity to the teacher, VBench.

* Toy scores: :mod:`dcm.world.metrics` per video, aggregated VBench-style.
* Teacher fidelity: PSNR and SSIM of each video against the teacher's video from the same
  prompt and seed (hence the same initial noise).
* VBench (package ``vbench``, ``mode="custom_input"``, ``local=True``): ``temporal_flickering``
  always (it needs no weights); every other custom-input dimension whose weights are found under
  ``$VBENCH_CACHE_DIR``. Totals use VBench's normalisation over the dimensions present and say
  which those are; a dimension without weights is reported missing, never scored as 0.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# VBench 0.1.5 quality dimensions usable on custom input: (Min, Max, weight) and the files its
# loaders expect under $VBENCH_CACHE_DIR (reference-facts §8).
VBENCH_QUALITY = {
    "subject_consistency": (0.1462, 1.0, 1.0, ["dino_model/dino_vitb16_full.pth"]),
    "background_consistency": (0.2615, 1.0, 1.0, ["clip_model/ViT-B-32.pt"]),
    "temporal_flickering": (0.6293, 1.0, 1.0, []),
    "motion_smoothness": (0.706, 0.9975, 1.0, ["amt_model/amt-s.pth"]),
    "dynamic_degree": (0.0, 1.0, 0.5, ["raft_model/models/raft-things.pth"]),
    "aesthetic_quality": (0.0, 1.0, 1.0, ["aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
                                          "clip_model/ViT-L-14.pt"]),
    "imaging_quality": (0.0, 1.0, 1.0, ["pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"]),
}
VBENCH_QUALITY_DIVISOR = 6.5  # VBench's sum of quality weights


def vbench_cache_dir() -> Path:
    return Path(os.environ.get("VBENCH_CACHE_DIR", Path.home() / ".cache" / "vbench"))


def vbench_availability() -> tuple[list[str], dict[str, list[str]]]:
    """Dimensions that can run, and for the others the weight files missing (full paths)."""
    cache = vbench_cache_dir()
    present, missing = [], {}
    for dim, (*_, files) in VBENCH_QUALITY.items():
        absent = [str(cache / f) for f in files if not (cache / f).exists()]
        if absent:
            missing[dim] = absent
        else:
            present.append(dim)
    return present, missing


def run_vbench(video_dir: Path, dimensions: list[str]) -> dict[str, dict[str, float]]:
    """Per-dimension ``{video file name: score}`` from the vbench package."""
    from vbench import VBench

    with tempfile.TemporaryDirectory(prefix="dcm-vbench-") as out:
        bench = VBench(torch.device("cuda" if torch.cuda.is_available() else "cpu"), None, out)
        bench.evaluate(videos_path=str(video_dir), name="dcm", dimension_list=dimensions, local=True,
                       read_frame=False, mode="custom_input")
        results = json.loads((Path(out) / "dcm_eval_results.json").read_text())
    return {dim: {Path(r["video_path"]).name: float(r["video_results"]) for r in results[dim][1]}
            for dim in dimensions}


def vbench_scores(per_dimension: dict[str, float]) -> dict[str, float | str]:
    """VBench's normalised quality over the dimensions present, labelled with their list."""
    weighted, weights = 0.0, 0.0
    for dim, raw in per_dimension.items():
        lo, hi, weight, _ = VBENCH_QUALITY[dim]
        weighted += (raw - lo) / (hi - lo) * weight
        weights += weight
    return {"vbench_quality": weighted / weights if weights else float("nan"),
            "vbench_dimensions": ",".join(sorted(per_dimension))}


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
