"""Flow-matching maths: noising, shifted grid, Euler steps."""

import pytest
import torch

from dcm import flow


def test_noising_interpolates_between_data_and_noise():
    x0, eps = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    torch.testing.assert_close(flow.add_noise(x0, eps, torch.tensor([0.0, 0.0])), x0)
    torch.testing.assert_close(flow.add_noise(x0, eps, torch.tensor([1.0, 1.0])), eps)
    mid = flow.add_noise(x0, eps, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(mid[0], 0.25 * eps[0] + 0.75 * x0[0])
    torch.testing.assert_close(mid[1], 0.75 * eps[1] + 0.25 * x0[1])


def test_velocity_is_the_derivative_of_the_path():
    x0, eps = torch.randn(1, 3, 2, 4, 4), torch.randn(1, 3, 2, 4, 4)
    s, h = torch.tensor([0.4]), 1e-3
    numeric = (flow.add_noise(x0, eps, s + h) - flow.add_noise(x0, eps, s - h)) / (2 * h)
    torch.testing.assert_close(numeric, flow.velocity_target(x0, eps), atol=1e-3, rtol=1e-3)


def test_euler_step_is_exact_on_a_linear_path():
    x0, eps = torch.randn(3, 3, 2, 4, 4), torch.randn(3, 3, 2, 4, 4)
    v = flow.velocity_target(x0, eps)
    grid = flow.sigma_grid(50, shift=17.0)
    x = flow.add_noise(x0, eps, grid[50].expand(3))
    for k in range(50, 0, -1):
        x = flow.euler_step(x, v, grid[k], grid[k - 1])
        torch.testing.assert_close(x, flow.add_noise(x0, eps, grid[k - 1].expand(3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=1e-5)


def test_shifted_grid_runs_from_clean_to_noise_and_crowds_near_one():
    grid = flow.sigma_grid(50, shift=17.0)
    assert grid.shape == (51,)
    assert grid[0] == 0 and grid[-1] == pytest.approx(1.0)
    assert torch.all(grid[1:] > grid[:-1])
    assert grid[25] > 0.9  # shift 17 crowds the grid near sigma = 1
    # the release's boundaries (the authors' released scripts): s(38/50) for HunyuanVideo, s(35/50) for Wan
    assert grid[38].item() == pytest.approx(0.98176, abs=1e-4)
    assert grid[35].item() == pytest.approx(0.97541, abs=1e-4)


def test_unshifted_grid_is_uniform():
    torch.testing.assert_close(flow.sigma_grid(4, shift=1.0), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def test_training_sigmas_are_in_range_and_reproducible():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = flow.sample_training_sigmas(256, 3.0, logit_normal=True, mean=0.0, std=1.0, generator=g1)
    b = flow.sample_training_sigmas(256, 3.0, logit_normal=True, mean=0.0, std=1.0, generator=g2)
    torch.testing.assert_close(a, b)
    assert a.min() > 0 and a.max() < 1
    assert a.median() > 0.5  # shift > 1 moves mass towards noise


def test_grid_needs_a_step():
    with pytest.raises(ValueError):
        flow.sigma_grid(0, 3.0)
