"""The consistency objective shared by every method (paper Sec. 3.1 Eq. 4-5, Sec. 3.2 Eq. 6-7,
Sec. 3.4 Eq. 8).

For a grid index ``i`` inside a phase ending at ``e``:

* prediction: the student's jump to the phase end, ``x_i + (sigma_e - sigma_i) * v_student(x_i)``;
* target: the teacher's next grid point ``x_{i-1}`` followed by the target network's jump to the
  phase end, ``sg[x_{i-1} + (sigma_e - sigma_{i-1}) * v_target(x_{i-1})]``, or ``x_{i-1}`` itself
  when ``i - 1 = e``;
* distance: pseudo-Huber, ``mean(sqrt((pred - target)^2 + c^2) - c)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dcm import flow

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma per sample) -> v


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    return (torch.sqrt((pred.float() - target.float()) ** 2 + c * c) - c).mean()


def temporal_coherence(pred: torch.Tensor, target: torch.Tensor, lag: int) -> torch.Tensor:
    """MSE between frame differences at ``lag`` latent frames of prediction and target (``(B, C, T, H, W)``)."""
    if pred.shape[2] <= lag:
        raise ValueError(f"temporal coherence lag {lag} needs more than {lag} latent frames, got {pred.shape[2]}")
    d_pred = pred[:, :, lag:] - pred[:, :, :-lag]
    d_target = target[:, :, lag:] - target[:, :, :-lag]
    return torch.mean((d_pred.float() - d_target.float()) ** 2)


@torch.no_grad()
def consistency_target(x_prev: torch.Tensor, i: torch.Tensor, end: torch.Tensor, sigmas: torch.Tensor,
                       target_velocity: Velocity) -> torch.Tensor:
    """``x_{i-1}`` carried to the phase end by the (stop-gradient) target network. The network is
    called even when every ``x_{i-1}`` already is at its phase end: under FSDP a forward is a
    collective, so every process has to make the same calls whatever its batch holds."""
    prev = i - 1
    at_end = prev == end
    carried = flow.euler_step(x_prev, target_velocity(x_prev, sigmas[prev]), sigmas[prev], sigmas[end])
    return torch.where(at_end.view(-1, *([1] * (x_prev.ndim - 1))).to(x_prev.device), x_prev, carried)


def consistency_prediction(x_i: torch.Tensor, i: torch.Tensor, end: torch.Tensor, sigmas: torch.Tensor,
                           student_velocity: Velocity) -> torch.Tensor:
    return flow.euler_step(x_i, student_velocity(x_i, sigmas[i]), sigmas[i], sigmas[end])
