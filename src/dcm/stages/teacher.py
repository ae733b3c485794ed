"""Stage ``teacher``: train the tiny teacher, or point the teacher folder at a real checkpoint."""

from __future__ import annotations

from dcm.config import Params
from dcm.layout import Layout
from dcm.tracking import stage_run


def run_teacher(params: Params, layout: Layout = Layout()) -> None:
    """Train the tiny teacher (resuming from its checkpoint), or, for a real backbone, check
    ``model.path`` and point the teacher folder at it."""
    m = params.model
    if not m.toy_world:
        from dcm.models import backbone_class, write_backbone_link

        adapter = backbone_class(m.backbone)
        adapter.check(m.path)
        write_backbone_link(layout.teacher_model, m.backbone, m.path, **adapter.loader_options(m))
        return
    from dcm.teacher.training import train_teacher

    with stage_run("teacher", params):
        train_teacher(params, layout.teacher)
