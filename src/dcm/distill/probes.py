"""What the trainer measures along the way, outside the training step: the loss and gradient norm by
noise level (paper Fig. 2), and the student's few-step validation curve with its collapse guard."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from dcm import flow
from dcm.config import Params
from dcm.data.validation_set import ValidationSet
from dcm.distill import objective
from dcm.distill.batches import Batch, Source, previous_point
from dcm.distill.methods import Method
from dcm.distill.student import trainable_parameters
from dcm.errors import DcmError
from dcm.io import atomic_path, write_csv
from dcm.layout import BUCKETS, VALIDATION
from dcm.models.base import Backbone
from dcm.tracking import log_metrics


class BucketProbe:
    """Loss and gradient norm per noise-level bucket on a fixed batch (paper Fig. 2)."""

    def __init__(self, params: Params, data: Source, points, ends, sigmas, out_dir: Path):
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
            batch = Batch(self.data, pts, ends, self.params.distill.batch_size, gen, empty, empty.device)
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


class CollapseError(DcmError, RuntimeError):
    """A student whose validation shows collapse: training stops, the last healthy checkpoint is kept."""


class ValidationCurve:
    """The student's few-step samples of the fixed validation set (:mod:`dcm.data.validation_set`)
    along training, each method sampled as :meth:`Method.validation_models` says, compared with the
    teacher's samples from the same noise (PSNR, SSIM, saturation, frame change, per-frame variance),
    and on the toy world scored against the ground truth. Its rows travel in the checkpoint, so a
    resumed run's curve holds the steps taken before."""

    def __init__(self, params: Params, teacher: Backbone, method: Method, sigmas: torch.Tensor, empty: torch.Tensor,
                 out_dir: Path, validation: ValidationSet, batch_size: int = 8):
        self.params, self.teacher, self.method, self.sigmas, self.empty = params, teacher, method, sigmas, empty
        self.validation, self.batch_size = validation, batch_size
        self.path = out_dir / VALIDATION
        self.rows: list[dict] = []
        self._teacher_videos: list[np.ndarray] | None = None

    def state_dict(self) -> dict:
        return {"validation": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = state.get("validation", [])

    def _videos(self, latents: torch.Tensor) -> list[np.ndarray]:
        from dcm.world.render import to_video

        return [to_video(v) for start in range(0, len(latents), self.batch_size)
                for v in self.teacher.decode_latents(latents[start:start + self.batch_size].to(self.empty.device))]

    @torch.no_grad()
    def sample(self, student: torch.nn.Module) -> torch.Tensor:
        """The student's few-step latents of the validation set."""
        device, out = self.empty.device, []
        student.eval()
        for start in range(0, len(self.validation.items), self.batch_size):
            text = self.validation.prompt_embeds[start:start + self.batch_size].float().to(device)
            empty = self.empty.expand(len(text), -1, -1)
            x = self.teacher.initial_latents(self.validation.noise[start:start + self.batch_size].to(device),
                                             float(self.sigmas[-1]))
            for model, indices, guidance in self.method.validation_models(student):
                velocity = self.teacher.guided_velocity(model, text, empty, guidance,  # students: guidance 1
                                                        self.params.trajectories.guidance_scale_2)
                for a, b in zip(indices[:-1], indices[1:], strict=True):
                    x = flow.euler_step(x, velocity(x, self.sigmas[a]), self.sigmas[a], self.sigmas[b])
            out.append(x)
        return torch.cat(out)

    @torch.no_grad()
    def check(self, student: torch.nn.Module, step: int) -> dict:
        """Sample and score the student at ``step``; log it, write ``validation.csv``, return the row."""
        from dcm.evaluation.fidelity import fidelity_to_teacher

        if self._teacher_videos is None:
            self._teacher_videos = self._videos(self.validation.teacher_latents.float())
        latents = self.sample(student)
        row: dict = {"step": step}
        finite = bool(torch.isfinite(latents).all()) and all(
            bool(torch.isfinite(p).all()) for p in trainable_parameters(student))
        row["finite"] = int(finite)
        videos = self._videos(torch.nan_to_num(latents))
        if self.params.model.toy_world:
            from dcm.evaluation.samples import score_samples
            from dcm.world.grammar import parse_prompt

            items = [(parse_prompt(text), seed) for text, seed in self.validation.items]
            scores = score_samples(videos, items, self.params.world.to_config()).aggregate
            row |= {k: scores[k] for k in ("total", "quality", "semantic")}
        row |= fidelity_to_teacher(videos, self._teacher_videos)
        row = {k: v if k == "step" else round(float(v), 5) for k, v in row.items()}
        self.rows = [r for r in self.rows if r["step"] < step] + [row]
        write_csv(self.path, self.rows)
        log_metrics({f"val_{k}": v for k, v in row.items() if k != "step"}, step=step)
        return row

    def collapse(self) -> str | None:
        """What the newest check shows collapsed (``distill.collapse_*``), or None when it is healthy."""
        d, row = self.params.distill, self.rows[-1]
        if not row["finite"]:
            return "non-finite weights or samples"
        if d.collapse_variance_ratio and row["frame_variance_ratio"] < d.collapse_variance_ratio:
            return (f"per-frame variance {row['frame_variance_ratio']:.3f} of the teacher's, below "
                    f"distill.collapse_variance_ratio = {d.collapse_variance_ratio} (solid-colour output)")
        if d.collapse_motion_ratio and row["frame_change_ratio"] < d.collapse_motion_ratio:
            return (f"frame-to-frame change {row['frame_change_ratio']:.3f} of the teacher's, below "
                    f"distill.collapse_motion_ratio = {d.collapse_motion_ratio} (static output)")
        best = max(r["psnr"] for r in self.rows)  # step 0 included: the untrained student, the teacher itself
        if d.collapse_psnr_drop and row["psnr"] < best - d.collapse_psnr_drop:
            return (f"PSNR to the teacher {row['psnr']:.2f} dB, more than distill.collapse_psnr_drop = "
                    f"{d.collapse_psnr_drop} dB below its best so far ({best:.2f} dB)")
        return None
