"""Evaluation: scoring a set of samples, fidelity maths, VBench availability, and bad sample folders."""

import json

import numpy as np
import pytest

from dcm.evaluation.fidelity import psnr, ssim
from dcm.evaluation.samples import score_samples
from dcm.evaluation.vbench_runner import vbench_plan, vbench_scores
from dcm.io import write_manifest, write_mp4
from dcm.layout import Layout
from dcm.stages.evaluate import run_evaluate
from dcm.world import parse_prompt, render_video


def test_each_sample_is_scored_against_the_prompt_it_was_sampled_from(world):
    items = [(parse_prompt("a red circle moving left on a stripes background"), 3),
             ("a blue square moving up on a checker background", 4)]
    videos = [render_video(prompt, seed, world) for prompt, seed in items]
    scores = score_samples(videos, items, world)
    assert [(row["prompt"], row["seed"]) for row in scores.rows] == [(str(p), s) for p, s in items]
    assert scores.aggregate["semantic"] == 1.0  # rendered truth matches its prompt in every attribute
    assert scores.aggregate["total"] == pytest.approx((4 * scores.aggregate["quality"] + 1.0) / 5)
    assert score_samples(videos[::-1], items, world).aggregate["semantic"] < 0.5  # each against the other's prompt
    with pytest.raises(ValueError, match="2 videos for 1"):
        score_samples(videos, items[:1], world)


def test_psnr_and_ssim_reward_closeness(world):
    video = render_video("a red circle moving left on a stripes background", 0, world)
    noisy = np.clip(video + np.random.default_rng(0).normal(0, 0.05, video.shape), 0, 1).astype(np.float32)
    noisier = np.clip(video + np.random.default_rng(0).normal(0, 0.2, video.shape), 0, 1).astype(np.float32)
    assert psnr(video, video) == float("inf") and ssim(video, video) == pytest.approx(1.0)
    assert psnr(video, noisy) > psnr(video, noisier) > 0
    assert 1.0 > ssim(video, noisy) > ssim(video, noisier)


def test_vbench_runs_the_suites_prompts_in_standard_mode_and_others_in_custom_input_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path))
    mode, present, missing = vbench_plan("vbench:temporal_flickering")
    assert mode == "standard" and "temporal_flickering" in present and "scene" in missing
    mode, present, missing = vbench_plan(None)
    assert mode == "custom_input" and "scene" not in present and "scene" not in missing  # refused in that mode
    assert any(str(tmp_path / "amt_model/amt-s.pth") in need for need in missing["motion_smoothness"])


def test_vbench_totals_cover_only_the_dimensions_present_and_say_so():
    scores = vbench_scores({"temporal_flickering": 1.0})
    assert scores == {"vbench_quality": 1.0, "vbench_semantic": None, "vbench_total": None,
                      "vbench_dimensions": "temporal_flickering", "vbench_partial": True}


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
    layout = Layout(tmp_path)
    samples = layout.samples
    with pytest.raises(FileNotFoundError, match="latency.json"):
        run_evaluate(params, layout)
    samples.mkdir(parents=True)
    (samples / "latency.json").write_text(json.dumps({}))
    _folder(samples, "teacher@4", "teacher", 4, world)
    with pytest.raises(FileNotFoundError, match="lcm@2"):
        run_evaluate(params, layout)
    _folder(samples, "lcm@2", "pcm", 2, world)
    with pytest.raises(ValueError, match="another method"):
        run_evaluate(params, layout)
    (samples / "lcm@2" / "manifest.jsonl").write_text("")
    with pytest.raises(ValueError, match="no videos"):
        run_evaluate(params, layout)
