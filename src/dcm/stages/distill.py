"""Stages ``semantic``, ``detail``, ``lcm`` and ``pcm``: every consistency student."""

from __future__ import annotations

from dcm.config import Params
from dcm.layout import Layout
from dcm.tracking import stage_run


def run_distill(params: Params, stage: str, layout: Layout = Layout()) -> dict:
    """Train the student of ``stage`` (semantic, detail, lcm or pcm), resuming from its checkpoint."""
    from dcm.distill.trainer import check_inputs, distill

    check_inputs(params, stage, layout)
    with stage_run(stage, params):
        return distill(params, stage, layout)
