"""Stage ``boundary``: suggest the boundary from the teacher's trajectories (``dcm boundary``)."""

from __future__ import annotations

import json
import logging

from dcm.config import Params
from dcm.layout import MANIFEST, Layout
from dcm.tracking import stage_run

log = logging.getLogger(__name__)


def run_boundary(params: Params, layout: Layout = Layout()):
    """Measure the trajectories, write ``reports/boundary_suggestion.json`` and its figure, and return
    the suggestion (the toy world's commitment curve; else the knee of the normalised change)."""
    from dcm.boundary import suggest
    from dcm.data.trajectories import TrajectorySpec, check_manifest
    from dcm.data.trajectories import load as load_trajectories
    from dcm.io import write_json
    from dcm.reporting.figures import boundary_curves
    from dcm.tracking import log_metrics

    check_manifest(layout.trajectories, params)
    shape = json.loads((layout.trajectories / MANIFEST).read_text())["spec"]["shape"]
    data = load_trajectories(layout.trajectories, TrajectorySpec.from_params(params, tuple(shape)), verify_hash=False)
    decode = world = None
    if params.model.toy_world:
        from dcm.world.render import to_video

        world = params.world.to_config()
        decode = lambda latents: [to_video(v) for v in latents]  # noqa: E731 (the tiny teacher works in pixels)
    with stage_run("boundary", params):
        suggestion = suggest(data, decode, world)
        write_json(layout.boundary_suggestion, {**suggestion.to_json(), "params_boundary": params.boundary})
        boundary_curves(suggestion, params.boundary, layout.boundary_suggestion_figure)
        log_metrics({"suggested_boundary": suggestion.boundary, "suggested_sigma": suggestion.sigma})
    at = suggestion.at_boundary or {}
    log.info("boundary: suggested %d (sigma %.4f, by %s)%s; params.yaml has %d", suggestion.boundary,
             suggestion.sigma, suggestion.method,
             "; committed there: " + ", ".join(f"{k} {v:.2f}" for k, v in at.items()) if at else "",
             params.boundary)
    return suggestion
