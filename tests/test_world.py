"""The toy world: grammar, deterministic renderer."""

import numpy as np
import pytest

from dcm.world import PromptError, WorldConfig, all_prompts, parse_prompt, render_video
from dcm.world.grammar import COLORS, DIRECTIONS, SHAPES, TEXTURES
from dcm.world.render import draw_layout


def test_grammar_covers_the_required_vocabulary():
    assert {"red", "green", "blue", "yellow"} <= set(COLORS)
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert set(DIRECTIONS) == {"left", "right", "up", "down"}
    assert len(TEXTURES) >= 3
    assert len(all_prompts()) == len(COLORS) * len(SHAPES) * len(DIRECTIONS) * len(TEXTURES)


def test_prompt_round_trips_through_text():
    for prompt in all_prompts()[:10]:
        assert parse_prompt(prompt.text) == prompt


@pytest.mark.parametrize("text, word", [
    ("a purple circle moving left on a stripes background", "purple"),
    ("a red hexagon moving left on a stripes background", "hexagon"),
    ("a red circle moving sideways on a stripes background", "sideways"),
    ("a red circle moving left on a plaid background", "plaid"),
])
def test_unknown_word_is_an_error_listing_the_vocabulary(text, word):
    with pytest.raises(PromptError) as err:
        parse_prompt(text)
    assert word in str(err.value)
    assert "circle" in str(err.value) or "red" in str(err.value)


def test_malformed_prompt_names_the_template():
    with pytest.raises(PromptError, match="template"):
        parse_prompt("a cat")


def test_renderer_is_deterministic_and_seed_dependent(world):
    a = render_video("a red circle moving left on a stripes background", 3, world)
    b = render_video("a red circle moving left on a stripes background", 3, world)
    c = render_video("a red circle moving left on a stripes background", 4, world)
    assert a.shape == (world.frames, world.size, world.size, 3)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_frame_count_and_size_are_parameters():
    cfg = WorldConfig(frames=12, size=48)
    assert render_video("a blue square moving up on a checker background", 0, cfg).shape == (12, 48, 48, 3)


def test_object_moves_at_constant_velocity_in_its_direction_and_stays_inside(world):
    for prompt in all_prompts():
        layout = draw_layout(prompt, 11, world)
        dx, dy = DIRECTIONS[prompt.direction]
        vx, vy = layout.velocity
        assert np.sign(vx) == dx and np.sign(vy) == dy
        speed = abs(vx) + abs(vy)
        assert world.speed_min <= speed <= world.speed_max
        for t in (0, world.frames - 1):
            x, y = layout.start[0] + vx * t, layout.start[1] + vy * t
            assert world.extent <= x <= world.size - world.extent
            assert world.extent <= y <= world.size - world.extent


def test_shapes_are_anti_aliased(world):
    video = render_video("a red circle moving left on a stripes background", 0, world)
    saturation = video.max(-1) - video.min(-1)
    partial = (saturation > 0.05) & (saturation < 0.75)
    assert partial.sum() > 10  # edge pixels are blends, not a hard 0/1 mask


def test_backgrounds_are_grayscale_with_fine_detail(world):
    for texture in TEXTURES:
        video = render_video(f"a red circle moving left on a {texture} background", 0, world)
        corner = video[0, :6, :6]
        assert np.allclose(corner[..., 0], corner[..., 1]) and np.allclose(corner[..., 1], corner[..., 2])
        assert np.abs(np.diff(video[0, :, :, 0], axis=1)).mean() > 0.05  # high-frequency content


def test_world_rejects_geometry_that_cannot_fit():
    with pytest.raises(ValueError, match="speed_max"):
        WorldConfig(frames=32, speed_max=3.0).check()


def test_random_textures_are_drawn_per_seed_with_the_prompts_statistics():
    """Random textures: the seed draws every band or cell (not one of a few phases), the prompt
    fixes along which direction the texture stays constant."""
    import dataclasses

    from dcm.world.render import RANDOM_TEXTURE_CONSTANT_STEP, WorldConfig, render_texture

    world = dataclasses.replace(WorldConfig(), textures="random")
    for texture, step in RANDOM_TEXTURE_CONSTANT_STEP.items():
        images = [render_texture(texture, (0, 0), world, seed) for seed in range(32)]
        assert np.array_equal(images[3], render_texture(texture, (0, 0), world, 3))
        assert len({im.tobytes() for im in images}) == 32
        assert np.allclose(sorted(np.unique(images[0])), [world.texture_low, world.texture_high])
        if step is not None:
            dx, dy = step
            image = images[0]
            shifted = np.roll(np.roll(image, -dy, axis=0), -dx, axis=1)
            inner = (slice(1, -1), slice(1, -1))
            assert np.array_equal(image[inner], shifted[inner])
