"""VBench on a folder of samples (package ``vbench``, ``local=True``).

Every dimension whose weights and packages are there is scored
(:func:`dcm.evaluation.vbench_suite.availability`; dcm never lets VBench download); the others are
reported missing with what they need, never scored. Prompts from VBench's suite
(``sample.prompt_file: vbench`` or ``vbench:<dimension>``) are sampled and named as VBench's
*standard* mode expects and scored in that mode (all 16 dimensions can run); any other prompts in
``custom_input`` mode (the dimensions VBench allows there). Quality, Semantic and Total use VBench's
own normalisation and weights over the dimensions present, and say which those are
(:func:`dcm.evaluation.vbench_totals.vbench_totals`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from dcm.evaluation.vbench_suite import DIMENSIONS, availability, full_info_path
from dcm.evaluation.vbench_totals import vbench_totals

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
