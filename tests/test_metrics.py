"""The analytic evaluator: rendered truth scores high, each corruption hurts its own dimension,
in both worlds (periodic textures, and random textures drawn per seed)."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcm.world import WorldConfig, all_prompts, render_video
from dcm.world.metrics import (
    NORMALISATION_MIN,
    QUALITY_DIMENSIONS,
    RANDOM_TEXTURE_DETAIL_MIN,
    SEMANTIC_DIMENSIONS,
    aggregate_scores,
    analyze_video,
    calibrate_noise_floor,
    evaluate_video,
)

PROMPTS = all_prompts()[::3]  # 48 prompts covering every attribute value


def _rows(world, transform=lambda v, i: v):
    rows = []
    for i, prompt in enumerate(PROMPTS):
        video = transform(render_video(prompt, 1000 + i, world), i)
        rows.append(evaluate_video(video, prompt, world))
    return rows


def _blur(video, _i):
    x = torch.from_numpy(video).permute(0, 3, 1, 2)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 16
    x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3).contiguous(), groups=3)
    return x.permute(0, 2, 3, 1).numpy()


def _noise(video, i):
    return np.clip(video + np.random.default_rng(i).normal(0, 0.08, video.shape), 0, 1).astype(np.float32)


def _shuffle(video, i):
    order = np.random.default_rng(i).permutation(len(video))
    while (order == np.arange(len(video))).all():
        order = np.roll(order, 1)
    return video[order]


def _swap_colour(video, _i):
    return video[..., [2, 0, 1]]  # red->green->blue->red; grayscale background unchanged


@pytest.fixture(scope="module", params=["periodic", "random"])
def clean(request):
    from dcm.config import Params

    world = dataclasses.replace(Params().world.to_config(), textures=request.param)
    rows = _rows(world)
    return world, rows, aggregate_scores(rows, world)


def test_rendered_videos_are_recognised(clean):
    _, rows, scores = clean
    for dim in SEMANTIC_DIMENSIONS:
        assert scores[dim] >= 0.95, dim
    assert scores["semantic"] >= 0.95
    assert scores["quality"] >= 0.95
    assert scores["total"] >= 0.95


def test_speed_is_recovered(clean):
    world, _, _ = clean
    video = render_video("a green square moving right on a diagonal background", 5, world)
    from dcm.world.render import draw_layout
    from dcm.world import parse_prompt

    truth = draw_layout(parse_prompt("a green square moving right on a diagonal background"), 5, world)
    assert analyze_video(video, world).speed == pytest.approx(abs(truth.velocity[0]), abs=0.05)


@pytest.mark.parametrize("transform, dimension", [
    (_blur, "detail"),
    (_noise, "temporal_flickering"),
    (_noise, "background_consistency"),
    (_shuffle, "motion_smoothness"),
    (_swap_colour, "color"),
])
def test_each_corruption_breaks_its_dimension(clean, transform, dimension):
    world, _, clean_scores = clean
    scores = aggregate_scores(_rows(world, transform), world)
    assert scores[dimension] < clean_scores[dimension] - 0.1, (dimension, scores[dimension], clean_scores[dimension])
    assert scores["total"] < clean_scores["total"]


def test_colour_swap_leaves_shape_and_motion_alone(clean):
    world, _, clean_scores = clean
    scores = aggregate_scores(_rows(world, _swap_colour), world)
    for dim in ("object_class", "motion_direction", "scene"):
        assert scores[dim] == pytest.approx(clean_scores[dim])


def test_documented_noise_floor_matches_calibration(world):
    floor = calibrate_noise_floor(dataclasses.replace(world, textures="periodic"))
    for dim in QUALITY_DIMENSIONS:
        assert floor[dim] == pytest.approx(NORMALISATION_MIN[dim], abs=0.03), dim


def test_random_texture_noise_floor_matches_calibration(world):
    floor = calibrate_noise_floor(dataclasses.replace(world, textures="random"))
    assert floor["detail"] == pytest.approx(RANDOM_TEXTURE_DETAIL_MIN, abs=0.03)


def test_random_texture_detail_is_near_one_on_truth_and_lost_by_averaging_realisations(world):
    """A model that averages over the seed's realisations renders gray: detail falls, while the class
    of texture (its statistics) is still recognised where the averaging keeps an orientation."""
    world = dataclasses.replace(world, textures="random")
    prompt = "a red circle moving left on a stripes background"
    truth = [render_video(prompt, seed, world) for seed in range(8)]
    rows = [evaluate_video(v, prompt, world) for v in truth]
    assert min(r["detail"] for r in rows) >= 0.9
    assert all(r["recovered_texture"] == "stripes" for r in rows)
    averaged = evaluate_video(np.mean(truth, axis=0), prompt, world)
    assert averaged["detail"] < 0.5


def test_noise_videos_score_near_zero(world):
    rng = np.random.default_rng(1)
    rows = [evaluate_video(rng.random((world.frames, world.size, world.size, 3), dtype=np.float32), p, world)
            for p in PROMPTS[:8]]
    assert aggregate_scores(rows, world)["total"] < 0.15


def test_scores_follow_vbench_formula(clean):
    _, _, s = clean
    assert s["total"] == pytest.approx((4 * s["quality"] + s["semantic"]) / 5)


def test_empty_set_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        aggregate_scores([], WorldConfig())
