"""Stage ``trajectories``: the teacher's guided ODE trajectories the students learn from."""

from __future__ import annotations

from dcm.config import Params
from dcm.layout import Layout
from dcm.tracking import stage_run


def run_trajectories(params: Params, layout: Layout = Layout()) -> None:
    """Generate the teacher's ODE trajectories (finished shards are kept and skipped)."""
    from dcm.data.prompts import load_teacher_for_prompts
    from dcm.data.trajectories import generate, prompt_set
    from dcm.io import tree_fingerprint
    from dcm.models import check_guidance_scale_2, check_teacher_dir

    check_teacher_dir(layout.teacher_model)
    check_guidance_scale_2(layout.teacher_model, "trajectories.guidance_scale_2", params.trajectories.guidance_scale_2)
    prompt_set(params)  # a bad prompt source fails here, before anything is written
    # an image-to-video teacher: each prompt's image conditions its video
    backbone = load_teacher_for_prompts(params, "trajectories.prompt_file", layout.teacher_model)
    with stage_run("trajectories", params):
        generate(params, backbone, layout.trajectories, teacher=tree_fingerprint(layout.teacher_model))
