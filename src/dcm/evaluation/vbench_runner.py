"""Scoring sample folders beyond the toy world: fidelity to the teacher, and VBench.

* Teacher fidelity: PSNR and SSIM of each video against the teacher's video from the same
  prompt and seed (hence the same initial noise).
* VBench (package ``vbench``, ``local=True``): every dimension whose weights and packages are
  there (:func:`dcm.vbench_suite.availability`; dcm never lets VBench download); the others are
  reported missing with what they need, never scored. Prompts from VBench's suite
  (``sample.prompt_file: vbench`` or ``vbench:<dimension>``) are sampled and named as VBench's
  *standard* mode expects and scored in that mode (all 16 dimensions can run); any other prompts
  in ``custom_input`` mode (the dimensions VBench allows there). Quality, Semantic and Total use
  VBench's own normalisation and weights over the dimensions present, and say which those are
  (:func:`dcm.vbench_scores.vbench_totals`).
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

from dcm.vbench_scores import parse_eval_results, vbench_totals
from dcm.vbench_suite import DIMENSIONS, availability, full_info_path

STANDARD = "standard"
CUSTOM = "custom_input"


def vbench_plan(prompt_file: str | None, dimensions: list[str] | None = None) -> tuple[str, list[str],
                                                                                       dict[str, list[str]]]:
    """The VBench mode for these prompts, the dimensions that can run, and what the others lack."""
    mode = STANDARD if prompt_file and (prompt_file == "vbench" or prompt_file.startswith("vbench:")) else CUSTOM
    wanted = dimensions or [d for d, info in DIMENSIONS.items() if mode == STANDARD or CUSTOM in info.modes]
    present, missing = availability(wanted)
    return mode, present, missing


def run_vbench(video_dir: Path, videos: list[str], dimensions: list[str], mode: str) -> dict[str, dict[str, float]]:
    """Per-dimension ``{video file name: score}`` from the vbench package. VBench reads every file of
    the folder it is given, so it gets a folder of links to ``videos`` only."""
    from vbench import VBench

    with tempfile.TemporaryDirectory(prefix="dcm-vbench-") as work:
        folder = Path(work) / "videos"
        folder.mkdir()
        for name in videos:
            os.symlink((video_dir / name).resolve(), folder / name)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        bench = VBench(device, str(full_info_path()), work)
        bench.evaluate(videos_path=str(folder), name="dcm", dimension_list=dimensions, local=True, read_frame=False,
                       mode="vbench_standard" if mode == STANDARD else CUSTOM)
        results = json.loads((Path(work) / "dcm_eval_results.json").read_text())
    return {dim: {Path(r["video_path"]).name: float(r["video_results"]) for r in results[dim][1]}
            for dim in dimensions}


def vbench_scores(per_dimension: dict[str, float]) -> dict[str, float | str | bool | None]:
    """VBench's Quality, Semantic and Total over the dimensions present, labelled with their list."""
    totals = vbench_totals(per_dimension)
    return {"vbench_quality": totals["quality"], "vbench_semantic": totals["semantic"], "vbench_total": totals["total"],
            "vbench_dimensions": ",".join(totals["covers"]), "vbench_partial": totals["partial"]}


def mean_scores(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per dimension, the mean over videos (what VBench's results JSON holds as each dimension's score)."""
    return parse_eval_results({dim: [float(np.mean(list(scores.values()))), []] for dim, scores in results.items()})


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
