"""What the trainer measures along the way, outside the training step: the loss and gradient norm by
noise level (paper Fig. 2) and the student's 4-step validation curve (toy world)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from dcm import flow
from dcm.config import Params
from dcm.data.splits import toy_items
from dcm.data.trajectories import Trajectories, latent_shape
from dcm.distill import objective
from dcm.distill.batches import Batch, previous_point
from dcm.distill.methods import Method
from dcm.distill.student import trainable_parameters
from dcm.io import atomic_path, write_csv
from dcm.layout import BUCKETS, VALIDATION
from dcm.models.base import Backbone
from dcm.tracking import log_metrics


class BucketProbe:
    """Loss and gradient norm per noise-level bucket on a fixed batch (paper Fig. 2)."""

    def __init__(self, params: Params, data: Trajectories, points, ends, sigmas, out_dir: Path):
        self.params, self.data, self.sigmas = params, data, sigmas
        n = params.flow.steps
        edges = torch.linspace(0, n, params.distill.buckets + 1).round().long()
        self.buckets = []
        for b in range(params.distill.buckets):
            mask = (points > edges[b]) & (points <= edges[b + 1])
            if mask.any():
                self.buckets.append((b, points[mask], ends[mask], float(sigmas[edges[b]]), float(sigmas[edges[b + 1]])))
        self.path = out_dir / BUCKETS
        self.rows: list[dict] = []
        if self.path.exists():  # a resumed run keeps the rows of the steps it already took
            with self.path.open() as fh:
                self.rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]

    def probe(self, model, teacher: Backbone, empty: torch.Tensor, step: int) -> None:
        c = self.params.distill.huber_c
        gen = torch.Generator().manual_seed(12345)
        for b, pts, ends, lo, hi in self.buckets:
            batch = Batch(self.data, pts, ends, self.params.distill.batch_size, gen, empty.device)
            x_prev = previous_point(self.data, batch, teacher, empty)
            pred = objective.consistency_prediction(batch.x_i, batch.i, batch.end, self.sigmas,
                                                    lambda x, s: teacher.velocity(model, x, s, batch.text))
            target = objective.consistency_target(x_prev, batch.i, batch.end, self.sigmas,
                                                  lambda x, s: teacher.velocity(model, x, s, batch.text))
            loss = objective.pseudo_huber(pred, target, c)
            grads = torch.autograd.grad(loss, trainable_parameters(model), allow_unused=True)
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)).item()
            row = {"step": step, "bucket": b, "sigma_low": lo, "sigma_high": hi, "loss": loss.item(), "grad_norm": norm}
            self.rows.append(row)
            log_metrics({f"bucket_loss/{b:02d}": row["loss"], f"bucket_grad_norm/{b:02d}": norm}, step=step)
        self.rows = [r for r in self.rows if r["step"] <= step]
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)


class ValidationCurve:
    """Scores of a 4-step sample of the validation videos along training, each method sampled as
    :meth:`Method.validation_models` says. Its rows travel in the checkpoint, so a resumed run's
    curve holds the steps taken before."""

    def __init__(self, params: Params, teacher: Backbone, method: Method, sigmas: torch.Tensor, empty: torch.Tensor,
                 out_dir: Path):
        self.params, self.teacher, self.method, self.sigmas, self.empty = params, teacher, method, sigmas, empty
        self.path = out_dir / VALIDATION
        self.rows: list[dict] = []

    def state_dict(self) -> dict:
        return {"validation": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = state.get("validation", [])

    @torch.no_grad()
    def check(self, student: torch.nn.Module, step: int) -> None:
        """Score the student at ``step``; log it and write ``validation.csv``."""
        from dcm.evaluation.samples import score_samples
        from dcm.guidance import initial_noise
        from dcm.world.render import to_video

        items = toy_items("validation", self.params.distill.validate_videos)
        shape = latent_shape(self.params, self.teacher)
        text = self.teacher.encode_prompts([p.text for p, _ in items]).to(self.empty.device)
        empty = self.empty.expand(len(items), -1, -1)
        x = initial_noise([s for _, s in items], shape).to(self.empty.device)
        student.eval()
        for model, indices, guidance in self.method.validation_models(student):
            velocity = self.teacher.guided_velocity(model, text, empty, guidance)
            for a, b in zip(indices[:-1], indices[1:], strict=True):
                x = flow.euler_step(x, velocity(x, self.sigmas[a]), self.sigmas[a], self.sigmas[b])
        videos = [to_video(v) for v in self.teacher.decode_latents(x)]
        scores = score_samples(videos, items, self.params.world.to_config()).aggregate
        row = {"step": step, **{k: round(scores[k], 5) for k in ("total", "quality", "semantic")}}
        self.rows = [r for r in self.rows if r["step"] < step] + [row]
        write_csv(self.path, self.rows)
        log_metrics({f"val_{k}": v for k, v in row.items() if k != "step"}, step=step)
