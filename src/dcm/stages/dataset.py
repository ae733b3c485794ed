"""Stage ``dataset``: a video dataset encoded to VAE latents and text embeddings, the training points
of ``distill.source: data`` (with ``distill.source: trajectories`` it has nothing to do)."""

from __future__ import annotations

import logging

from dcm.config import Params
from dcm.io import tree_fingerprint, write_json
from dcm.layout import Layout
from dcm.tracking import log_metrics, stage_run

log = logging.getLogger(__name__)

UNUSED = "unused.json"


def run_dataset(params: Params, layout: Layout = Layout()) -> dict | None:
    """Encode ``dataset.path`` (on the toy world with no path: ``dataset.videos`` ground-truth renders of
    the training prompts) into ``artifacts/data``; finished shards are kept and skipped. Returns the
    summary (videos listed, kept, skipped by reason), or None when ``distill.source`` is not ``data``."""
    from dcm.data import video_dataset as vd
    from dcm.models import check_teacher_dir, load_backbone

    cfg, out = params.dataset, layout.data
    if params.distill.source != "data":
        log.info("dataset: distill.source = %r, so the students do not read a dataset; nothing to encode "
                 "(set distill.source: data to distil from videos)", params.distill.source)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / UNUSED, {"distill.source": params.distill.source})
        return None
    (out / UNUSED).unlink(missing_ok=True)
    check_teacher_dir(layout.teacher_model)
    if cfg.path is None:  # the toy world renders its ground truth (config: only the toy world may lack a path)
        metadata = vd.render_toy_dataset(out / "videos", params.world.to_config(), cfg.videos, cfg.seed)
        records = vd.read_metadata(metadata)
    else:
        records = vd.read_metadata(cfg.path, cfg.columns, cfg.videos_dir)  # checked before any model loads
    backbone = load_backbone(layout.teacher_model)
    spec = vd.spec_from_params(params, backbone)
    with stage_run("dataset", params):
        summary = vd.encode_dataset(records, backbone, spec, out, cfg.shard_size, cfg.batch_size,
                                    teacher=tree_fingerprint(layout.teacher_model))
        log_metrics({"dataset_videos": summary.videos, "dataset_kept": summary.kept,
                     "dataset_skipped": summary.videos - summary.kept})
    return {"videos": summary.videos, "kept": summary.kept, "skipped": summary.skipped}
