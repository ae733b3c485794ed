"""Stage ``validation``: the fixed validation set every student is compared with while it trains."""

from __future__ import annotations

from dcm.config import Params
from dcm.layout import Layout
from dcm.tracking import stage_run


def run_validation(params: Params, layout: Layout = Layout()) -> None:
    """Sample the teacher (``flow.steps`` guided Euler steps) from the noise of each validation
    (prompt, seed) and store prompts, noise and samples in ``artifacts/validation``."""
    from dcm.data.prompts import load_teacher_for_prompts
    from dcm.data.validation_set import make
    from dcm.models import check_guidance_scale_2, check_teacher_dir

    check_teacher_dir(layout.teacher_model)
    check_guidance_scale_2(layout.teacher_model, "trajectories.guidance_scale_2", params.trajectories.guidance_scale_2)
    backbone = load_teacher_for_prompts(params, "trajectories.prompt_file", layout.teacher_model)
    with stage_run("validation", params):
        make(params, backbone, layout.validation_set)
