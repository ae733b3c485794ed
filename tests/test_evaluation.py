"""Evaluation: fidelity maths, VBench availability, and bad sample folders."""

import json

import numpy as np
import pytest

from dcm.evaluation import psnr, ssim, vbench_availability, vbench_scores
from dcm.io import write_manifest, write_mp4
from dcm.pipeline import run_evaluate
from dcm.world import render_video


def test_psnr_and_ssim_reward_closeness(world):
    video = render_video("a red circle moving left on a stripes background", 0, world)
    noisy = np.clip(video + np.random.default_rng(0).normal(0, 0.05, video.shape), 0, 1).astype(np.float32)
    noisier = np.clip(video + np.random.default_rng(0).normal(0, 0.2, video.shape), 0, 1).astype(np.float32)
    assert psnr(video, video) == float("inf") and ssim(video, video) == pytest.approx(1.0)
    assert psnr(video, noisy) > psnr(video, noisier) > 0
    assert 1.0 > ssim(video, noisy) > ssim(video, noisier)


def test_missing_vbench_weights_are_named_with_their_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path))
    present, missing = vbench_availability()
    assert present == ["temporal_flickering"]
    assert str(tmp_path / "amt_model/amt-s.pth") in missing["motion_smoothness"]
    (tmp_path / "amt_model").mkdir()
    (tmp_path / "amt_model/amt-s.pth").write_bytes(b"x")
    assert "motion_smoothness" in vbench_availability()[0]


def test_vbench_totals_cover_only_the_dimensions_present():
    scores = vbench_scores({"temporal_flickering": 1.0})
    assert scores == {"vbench_quality": 1.0, "vbench_dimensions": "temporal_flickering"}


def _folder(root, key, method, steps, world, count=2):
    records = []
    for i in range(count):
        write_mp4(root / key / f"{i}.mp4", render_video("a red circle moving left on a stripes background", i, world))
        records.append({"file": f"{i}.mp4", "prompt": "a red circle moving left on a stripes background", "seed": i,
                        "method": method, "steps": steps})
    write_manifest(root / key, records)


def test_bad_sample_folders_fail_before_scoring(tmp_path, micro_params, world, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = micro_params.with_overrides({"sample": {"methods": ["teacher", "lcm"], "steps": [2]}})
    samples = tmp_path / "samples"
    with pytest.raises(FileNotFoundError, match="latency.json"):
        run_evaluate(params, samples, tmp_path / "m.json", tmp_path / "e")
    samples.mkdir()
    (samples / "latency.json").write_text(json.dumps({}))
    _folder(samples, "teacher@4", "teacher", 4, world)
    with pytest.raises(FileNotFoundError, match="lcm@2"):
        run_evaluate(params, samples, tmp_path / "m.json", tmp_path / "e")
    _folder(samples, "lcm@2", "pcm", 2, world)
    with pytest.raises(ValueError, match="another method"):
        run_evaluate(params, samples, tmp_path / "m.json", tmp_path / "e")
    (samples / "lcm@2" / "manifest.jsonl").write_text("")
    with pytest.raises(ValueError, match="no videos"):
        run_evaluate(params, samples, tmp_path / "m.json", tmp_path / "e")
