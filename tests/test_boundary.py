"""The boundary suggested from the teacher's trajectories (`dcm boundary`)."""

import json

import numpy as np
import torch

from dcm.boundary import knee, suggest
from dcm.data.trajectories import Trajectories, TrajectorySpec
from dcm.layout import Layout
from dcm.stages.boundary import run_boundary
from dcm.stages.trajectories import run_trajectories
from dcm.world.render import WorldConfig, render_batch, to_video
from dcm.world.grammar import Prompt


def test_the_knee_is_where_the_curve_bends():
    indices = list(range(10, 0, -1))
    values = [10, 9, 8, 7, 6, 1, 0.9, 0.8, 0.7, 0.6]  # falls fast until index 5, then slowly
    assert knee(indices, values) == 5


def _straight_line_trajectories(commit_at: int, steps: int = 10) -> Trajectories:
    """Trajectories whose one-step estimate is pure noise above ``commit_at`` and the final video at
    and below it: the layout is committed exactly from ``commit_at`` on."""
    world = WorldConfig()
    prompts = [Prompt("red", "circle", "left", "stripes"), Prompt("blue", "square", "up", "checker")]
    x0 = render_batch(prompts, [1, 2], world)
    sigmas = torch.linspace(0, 1, steps + 1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    points = []
    for k in range(steps + 1):  # x_k on the straight path to a target that switches at commit_at
        target = x0 if k <= commit_at else torch.randn(x0.shape, generator=torch.Generator().manual_seed(k))
        points.append(sigmas[k] * noise + (1 - sigmas[k]) * target)
    latents = torch.stack(points, 1)
    spec = TrajectorySpec(steps, 1.0, 1.0, tuple(x0.shape[1:]), "float32", tuple(range(steps + 1)))
    return Trajectories(latents, torch.zeros(2, 4, 8), [p.text for p in prompts], sigmas, spec, "")


def test_the_suggestion_is_the_noisiest_index_from_which_the_layout_stays_committed():
    data = _straight_line_trajectories(commit_at=6)
    suggestion = suggest(data, lambda latents: [to_video(v) for v in latents], WorldConfig())
    assert suggestion.method == "commitment" and suggestion.boundary == 6
    layout = dict(zip(suggestion.indices, suggestion.commitment["layout"], strict=True))
    assert layout[6] == 1.0 and layout[8] < 0.9
    assert np.isclose(suggestion.sigma, 0.6)


def test_dcm_boundary_runs_on_the_trajectories_and_writes_its_report(workspace, micro_distill):
    run_trajectories(micro_distill)
    suggestion = run_boundary(micro_distill)
    written = json.loads(Layout().boundary_suggestion.read_text())
    assert written["boundary"] == suggestion.boundary and 1 <= suggestion.boundary <= micro_distill.flow.steps - 1
    assert written["params_boundary"] == micro_distill.boundary and written["commitment"]["layout"]
    assert Layout().boundary_suggestion_figure.stat().st_size > 1000
