"""Sub-trajectories and the consistency objective."""

import pytest
import torch

from dcm import flow
from dcm.distill import objective
from dcm.distill.phases import Phase, even_phases, phases_for, trainable_points


def test_each_role_learns_its_sub_trajectories():
    assert phases_for("semantic", 50, 35) == [Phase(50, 35)]
    assert phases_for("detail", 50, 35) == [Phase(35, 0)]
    assert phases_for("vanilla", 50, 35) == [Phase(50, 35), Phase(35, 0)]
    assert phases_for("lcm", 50, 35) == [Phase(50, 0)]
    assert phases_for("pcm", 50, 35, pcm_phases=4) == [Phase(50, 38), Phase(38, 25), Phase(25, 12), Phase(12, 0)]


def test_pcm_phases_tile_the_grid():
    for k in (1, 2, 3, 7, 50):
        phases = even_phases(50, k)
        assert phases[0].start == 50 and phases[-1].end == 0
        assert all(a.end == b.start for a, b in zip(phases, phases[1:]))


@pytest.mark.parametrize("boundary", [0, 50, -3])
def test_boundary_outside_the_grid_is_rejected(boundary):
    with pytest.raises(ValueError, match="boundary"):
        phases_for("semantic", 50, boundary)


def test_training_points_lie_strictly_inside_their_phase():
    points, ends = trainable_points(phases_for("vanilla", 50, 35))
    assert sorted(points.tolist()) == list(range(1, 51))
    assert torch.all((points > 35) == (ends == 35)) and torch.all((points <= 35) == (ends == 0))
    stored = torch.zeros(51, dtype=torch.bool)
    stored[::5] = True
    points, _ = trainable_points(phases_for("semantic", 50, 35), stored)
    assert points.tolist() == [50, 45, 40]


def test_pseudo_huber_is_zero_at_equality_and_linear_far_away():
    x = torch.randn(4, 3, 2, 4, 4)
    assert objective.pseudo_huber(x, x, 0.001).item() == 0.0
    far = objective.pseudo_huber(torch.zeros(10), torch.full((10,), 5.0), 0.001).item()
    assert far == pytest.approx(5.0, abs=2e-3)


def _linear_path(batch=3):
    """One straight path (the same video in every row): its exact velocity fits any sub-batch."""
    x0, eps = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 3, 4, 8, 8)
    sigmas = flow.sigma_grid(50, 3.0)
    exact = flow.velocity_target(x0, eps)
    return x0.expand(batch, -1, -1, -1, -1), eps.expand(batch, -1, -1, -1, -1), sigmas, lambda x, s: exact.expand_as(x)


def test_a_student_on_the_exact_ode_is_self_consistent():
    x0, eps, sigmas, exact = _linear_path()
    i, end = torch.tensor([50, 40, 36]), torch.tensor([35, 35, 35])
    x_i = flow.add_noise(x0, eps, sigmas[i])
    x_prev = flow.add_noise(x0, eps, sigmas[i - 1])
    pred = objective.consistency_prediction(x_i, i, end, sigmas, exact)
    target = objective.consistency_target(x_prev, i, end, sigmas, exact)
    torch.testing.assert_close(pred, target, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pred, flow.add_noise(x0, eps, sigmas[end]), atol=1e-5, rtol=1e-5)


def test_target_at_the_phase_end_is_the_teacher_point_itself():
    x0, eps, sigmas, _ = _linear_path(2)
    i, end = torch.tensor([36, 1]), torch.tensor([35, 0])
    x_prev = flow.add_noise(x0, eps, sigmas[i - 1])
    calls = []
    target = objective.consistency_target(x_prev, i, end, sigmas, lambda x, s: calls.append(1) or x * 100)
    torch.testing.assert_close(target, x_prev)
    assert calls == [1]  # called all the same: under FSDP every process must join every forward


def test_target_carries_no_gradient():
    x0, eps, sigmas, _ = _linear_path(2)
    w = torch.ones(1, requires_grad=True)
    target = objective.consistency_target(flow.add_noise(x0, eps, sigmas[torch.tensor([40, 45])]),
                                          torch.tensor([41, 46]), torch.tensor([35, 35]), sigmas, lambda x, s: x * w)
    assert not target.requires_grad


def test_temporal_coherence_compares_frame_differences():
    pred = torch.randn(2, 3, 8, 4, 4)
    assert objective.temporal_coherence(pred, pred + 0.7, lag=3).item() == pytest.approx(0.0, abs=1e-10)
    moved = pred.clone()
    moved[:, :, 5:] += 1.0
    assert objective.temporal_coherence(moved, pred, lag=3).item() > 0.1
    with pytest.raises(ValueError, match="lag"):
        objective.temporal_coherence(pred, pred, lag=8)
