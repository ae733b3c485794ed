"""One training loop for every consistency student: DCM's experts, the vanilla model, LCM, PCM.

Runs through accelerate (one CPU process by default, ``accelerate launch`` for more). Only the
main process logs to MLflow and writes checkpoints. Everything random in step ``k`` is drawn
from a generator seeded by ``(seed, role, k, process)``, so a run resumed from a checkpoint
ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import csv
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from dcm import flow
from dcm.config import Params, ParamsError, fingerprint
from dcm.data.splits import toy_items
from dcm.data.trajectories import Trajectories, TrajectorySpec, latent_shape
from dcm.data.trajectories import load as load_trajectories
from dcm.distill import objective
from dcm.distill.discriminator import Discriminator, FeatureTaps, d_hinge, g_hinge
from dcm.distill.phases import Role, phases_for, trainable_points
from dcm.experts import ParameterEfficientExpert, count_parameters
from dcm.io import atomic_path, load_checkpoint, save_checkpoint, write_csv
from dcm.layout import BUCKETS, CHECKPOINT, STUDENT_MODEL, VALIDATION, Layout
from dcm.models import load_backbone
from dcm.models.base import Backbone
from dcm.sampling import schedule, uniform_indices
from dcm.students import (StudentRecord, check_record, learned_values, load_full_model, save_full_model,
                          trajectory_fingerprint)
from dcm.tracking import log_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentPlan:
    """What one stage trains: role, phases, and which losses and parametrisation apply."""

    role: Role
    steps: int
    lr: float
    tc: bool
    gf: bool
    pe: bool

    @classmethod
    def for_stage(cls, stage: str, params: Params) -> StudentPlan | None:
        """``None`` when the stage has nothing to train (the detail stage without OD)."""
        a = params.ablation
        if stage == "semantic":
            return cls("semantic" if a.od else "vanilla", params.semantic.steps, params.semantic.lr, a.tc, False, False)
        if stage == "detail":
            if not a.od:
                return None
            return cls("detail", params.detail.steps, params.detail.lr, False, a.gf, a.pe)
        if stage in ("lcm", "pcm"):
            section = getattr(params, stage)
            return cls(stage, section.steps, section.lr, False, False, False)
        raise ValueError(f"unknown distillation stage {stage!r}")


def _generator(params: Params, role: str, step: int, process: int) -> torch.Generator:
    key = f"{params.distill.seed}/{role}/{step}/{process}".encode()
    return torch.Generator().manual_seed(zlib.crc32(key))


def build_student(plan: StudentPlan, params: Params, teacher: Backbone, layout: Layout):
    """The trainable module and its trainable parameters: a copy of the teacher, or (PE) a LoRA and
    copied timestep layers on the frozen semantic expert (paper Sec. 3.3)."""
    if plan.pe:
        base = load_full_model(layout.student("semantic"), teacher, "semantic")
        if params.distill.gradient_checkpointing:
            teacher.enable_gradient_checkpointing(base)
        d = params.detail
        student = ParameterEfficientExpert(base, teacher.timestep_layers, d.lora_rank, d.lora_alpha, d.lora_targets)
        return student, student.trainable_parameters()
    student = copy.deepcopy(teacher.transformer).requires_grad_(True)
    if params.distill.gradient_checkpointing:
        teacher.enable_gradient_checkpointing(student)
    return student, list(student.parameters())


def _student_state(student: torch.nn.Module, full: dict | None = None) -> dict:
    """What a checkpoint keeps of a student; ``full``: its whole state dict already gathered (FSDP)."""
    if isinstance(student, ParameterEfficientExpert):
        return student.detail_state_dict(full)
    return student.state_dict() if full is None else full


def _load_student_state(student: torch.nn.Module, state: dict) -> None:
    if isinstance(student, ParameterEfficientExpert):
        student.load_detail_state_dict(state)
    else:
        student.load_state_dict(state)


class _Batch:
    """A random draw of (video, grid point) pairs, moved to the training device."""

    def __init__(self, data: Trajectories, points: torch.Tensor, ends: torch.Tensor, batch: int, gen: torch.Generator,
                 device: torch.device | str = "cpu"):
        self.videos = torch.randint(len(data.latents), (batch,), generator=gen)
        pick = torch.randint(len(points), (batch,), generator=gen)
        self.i, self.end = points[pick], ends[pick]
        self.x_i = data.at(self.videos, self.i).to(device)
        self.text = data.prompt_embeds[self.videos].float().to(device)


def _previous_point(data: Trajectories, batch: _Batch, teacher: Backbone, empty: torch.Tensor) -> torch.Tensor:
    """``x_{i-1}``: stored, or one online guided teacher Euler step from ``x_i``."""
    prev = batch.i - 1
    stored = data.stored_mask[prev]
    out = torch.empty_like(batch.x_i)
    if stored.any():
        out[stored.to(out.device)] = data.at(batch.videos[stored], prev[stored]).to(out.device)
    if (~stored).any():
        idx = (~stored).nonzero(as_tuple=True)[0]
        with torch.no_grad():
            x, s = batch.x_i[idx.to(out.device)], data.sigmas[batch.i[idx]].to(out.device)
            velocity = teacher.guided_velocity(teacher.transformer, batch.text[idx.to(out.device)],
                                               empty.expand(len(idx), -1, -1), data.spec.guidance_scale)
            out[idx.to(out.device)] = flow.euler_step(x, velocity(x, s), s, data.sigmas[prev[idx]].to(out.device))
    return out


def check_inputs(params: Params, stage: str, layout: Layout = Layout()) -> None:
    """Fail before anything is written when the stage's inputs are missing or were made with other
    params: the teacher, the trajectories (their manifest's spec), the semantic expert under PE."""
    from dcm.data.trajectories import check_manifest
    from dcm.models import check_teacher_dir

    plan = StudentPlan.for_stage(stage, params)
    if plan is None:
        return
    check_teacher_dir(layout.teacher_model)
    check_manifest(layout.trajectories, params)
    if plan.pe:
        record = StudentRecord.read(layout.student("semantic"), "semantic")
        check_record(record, params, layout)


def distill(params: Params, stage: str, layout: Layout = Layout()) -> dict:
    """Train the student of ``stage`` into its folder of ``layout``, resuming from its checkpoint.
    Returns the summary written into its record."""
    plan = StudentPlan.for_stage(stage, params)
    out_dir = layout.student(stage)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan is None:
        record = StudentRecord(stage, "none", "none", [], params.boundary, learned_values(params, stage),
                               summary={"reason": "ablation.od = false: the semantic stage trained one vanilla "
                                                  "model for the whole trajectory"})
        record.write(out_dir)
        return record.summary
    run = DistillRun(params, stage, plan, layout)
    run.resume()
    while run.step < plan.steps:
        run.train_step()
    return run.finish()


class DistillRun:
    """One student's training: models, data, optimizers and the resumable state, set up once;
    :meth:`train_step` takes one step of the consistency objective (paper Eq. 6-7) with the
    stage's extra losses (TC, Eq. 8; GAN + feature matching, Eq. 9-10)."""

    def __init__(self, params: Params, stage: str, plan: StudentPlan, layout: Layout):
        self.params, self.stage, self.plan, self.layout = params, stage, plan, layout
        self.out_dir = layout.student(stage)
        d = params.distill
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                       mixed_precision={"fp32": "no"}.get(d.mixed_precision, d.mixed_precision))
        self.teacher = load_backbone(layout.teacher_model)
        self.teacher.transformer.requires_grad_(False).eval().to(self.accelerator.device)
        shape = latent_shape(params, self.teacher)
        if plan.tc and shape[1] <= params.semantic.tc_lag:
            raise ValueError(f"semantic.tc_lag = {params.semantic.tc_lag} needs more latent frames than that; this "
                             f"backbone's latents have {shape[1]} (shape {shape}); lower semantic.tc_lag or "
                             "turn ablation.tc off")
        self.data = load_trajectories(layout.trajectories, TrajectorySpec.from_params(params, shape))
        self.sigmas = self.data.sigmas.to(self.accelerator.device)
        self.phases = phases_for(plan.role, params.flow.steps, params.boundary, params.pcm.phases)
        self.points, self.ends = trainable_points(self.phases, self.data.stored_mask)
        self.empty = self.teacher.encode_prompts([""]).to(self.accelerator.device)
        self.inputs = {"trajectories": trajectory_fingerprint(layout)}
        if plan.pe:
            self.inputs["semantic"] = StudentRecord.read(layout.student("semantic"), "semantic").fingerprint
        self.fingerprint = fingerprint({"params": learned_values(params, stage), "inputs": self.inputs})

        # Random initialisation (LoRA, discriminator) from a generator fixed by the params alone: the
        # global one's state here depends on what the libraries loaded so far happened to draw.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(f"{d.seed}/{plan.role}/init".encode()))
            self.student, trainable = build_student(plan, params, self.teacher, layout)
            self.taps = self.disc = self.d_optimizer = None
            if plan.gf:
                self.taps = FeatureTaps(self.teacher.feature_blocks(), params.detail.feature_stride)
                self.disc = Discriminator(self.teacher.feature_dim(), len(self.taps.indices), params.detail.head_width,
                                          params.detail.head_frames)
                self.d_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=params.detail.d_lr, betas=(0.0, 0.999))
        if plan.gf and d.gradient_checkpointing:  # the GAN and feature losses backpropagate through the teacher
            self.teacher.enable_gradient_checkpointing(self.teacher.transformer)
        self.trainable_count = count_parameters(trainable)
        self.optimizer = torch.optim.AdamW(trainable, lr=plan.lr, weight_decay=d.weight_decay)
        self.ema = copy.deepcopy(self.student).requires_grad_(False) if d.target == "ema" else None
        self.step = 0
        self.seconds_before: float | None = 0.0  # None: resumed from a checkpoint without a clock
        self.checkpoint = self.out_dir / CHECKPOINT

    # ---- resume and save ----------------------------------------------------------------------
    def resume(self) -> None:
        """Load the checkpoint when it was written for these params and inputs, then let
        accelerate prepare the models (FSDP ranks reload their optimizer shards after that)."""
        ckpt = load_checkpoint(self.checkpoint)
        if ckpt is not None and (ckpt.get("fingerprint") != self.fingerprint or ckpt["step"] > self.plan.steps):
            log.warning("%s: %s was written with other params or trajectories, or past %d steps; starting over",
                        self.stage, self.checkpoint, self.plan.steps)
            ckpt = None
        if ckpt is not None:
            _load_student_state(self.student, ckpt["student"])
            if ckpt["optimizer"] is not None:  # else FSDP: each rank reloads its shard after prepare()
                self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.ema is not None:
                _load_student_state(self.ema, ckpt["ema"])
            if self.disc is not None:
                self.disc.load_state_dict(ckpt["disc"])
                if ckpt["d_optimizer"] is not None:
                    self.d_optimizer.load_state_dict(ckpt["d_optimizer"])
            self.step = ckpt["step"]
            self.seconds_before = ckpt.get("seconds")
            log.info("%s: resuming from %s at step %d", self.stage, self.checkpoint, self.step)
        acc = self.accelerator
        self.model, self.optimizer = acc.prepare(self.student, self.optimizer)
        if self.disc is not None:
            self.disc, self.d_optimizer = acc.prepare(self.disc, self.d_optimizer)
        self.raw = acc.unwrap_model(self.model)
        # the online target calls the prepared model: under FSDP the unwrapped one holds only this rank's shards
        self.target_net = self.ema if self.ema is not None else self.model
        self.sharded = acc.distributed_type == DistributedType.FSDP
        if self.sharded and self.plan.gf and self.params.detail.g_weighting == "adaptive":
            raise ParamsError("detail.g_weighting = 'adaptive' takes gradients of one layer, which FSDP shards; "
                              "use 'fixed' (with detail.g_warmup_steps) under FSDP, or DDP")
        self.rank_optimizers = self.out_dir / f"optimizer-rank{acc.process_index}.safetensors"  # FSDP: its shards
        if ckpt is not None and ckpt["optimizer"] is None:
            shards = load_checkpoint(self.rank_optimizers)
            self.optimizer.load_state_dict(shards["optimizer"])
            if self.d_optimizer is not None:
                self.d_optimizer.load_state_dict(shards["d_optimizer"])
        # Fig. 2 of the paper: one model over the whole trajectory (vanilla, LCM), loss and grads by noise level
        self.buckets = (_BucketProbe(self.params, self.data, self.points, self.ends, self.sigmas, self.out_dir)
                        if self.plan.role in ("vanilla", "lcm") else None)
        self.bar = tqdm(total=self.plan.steps, initial=self.step, desc=self.stage, disable=not acc.is_main_process)
        self.started, self.probe_seconds = time.perf_counter(), 0.0
        # the validation curve (toy world, main process): rows of the steps taken so far survive a resume
        self.validating = (self.params.distill.validate_every > 0 and self.params.model.toy_world
                           and acc.is_main_process and not self.sharded)
        self.validation_semantic = None
        self.validation_rows = ckpt.get("validation", []) if ckpt is not None else []
        if self.validating and self.step == 0:
            self.validate()  # the curve starts where the student starts

    def train_seconds(self) -> float | None:
        """Training time (probes excluded), carried through checkpoints."""
        if self.seconds_before is None:
            return None
        return self.seconds_before + time.perf_counter() - self.started - self.probe_seconds

    def save(self) -> None:
        acc = self.accelerator
        full = acc.get_state_dict(self.model)  # collectives under FSDP: every rank takes part
        disc_full = None if self.disc is None else acc.get_state_dict(self.disc)
        if self.sharded:
            save_checkpoint(self.rank_optimizers, {
                "optimizer": self.optimizer.state_dict(),
                "d_optimizer": None if self.d_optimizer is None else self.d_optimizer.state_dict()})
        if acc.is_main_process:
            state = {"fingerprint": self.fingerprint, "step": self.step, "seconds": self.train_seconds(),
                     "validation": getattr(self, "validation_rows", []),
                     "student": _student_state(self.raw, full),
                     "optimizer": None if self.sharded else self.optimizer.state_dict()}
            if self.ema is not None:
                state["ema"] = _student_state(self.ema)
            if self.disc is not None:
                state["disc"] = disc_full
                state["d_optimizer"] = None if self.sharded else self.d_optimizer.state_dict()
            save_checkpoint(self.checkpoint, state)
        acc.wait_for_everyone()

    # ---- one step -----------------------------------------------------------------------------
    def losses(self, batch: _Batch, x_prev: torch.Tensor, gen: torch.Generator) -> tuple[dict[str, torch.Tensor],
                                                                                       torch.Tensor]:
        """The student's losses on one batch (``x_prev``: the teacher's next points), and their sum."""
        params, plan, teacher = self.params, self.plan, self.teacher
        pred = objective.consistency_prediction(batch.x_i, batch.i, batch.end, self.sigmas,
                                                lambda x, s: teacher.velocity(self.model, x, s, batch.text))
        target = objective.consistency_target(x_prev, batch.i, batch.end, self.sigmas,
                                              lambda x, s: teacher.velocity(self.target_net, x, s, batch.text))
        losses = {"loss_consistency": objective.pseudo_huber(pred, target, params.distill.huber_c)}
        loss = losses["loss_consistency"]
        if plan.tc:
            losses["loss_tc"] = objective.temporal_coherence(pred, target, params.semantic.tc_lag)
            loss = loss + params.semantic.tc_weight * losses["loss_tc"]
        if plan.gf:
            detail_sigmas = self.sigmas[1:params.boundary + 1]
            sigma_a = detail_sigmas[torch.randint(len(detail_sigmas), (params.distill.batch_size,), generator=gen)]
            noise = torch.randn(pred.shape, generator=gen).to(pred.device)
            self.grid = teacher.token_grid(pred.shape)
            self.accelerator.unwrap_model(self.disc).requires_grad_(False)
            with self.taps.capture() as fake_features:
                v_fake = teacher.velocity(teacher.transformer, flow.add_noise(pred, noise, sigma_a), sigma_a, batch.text)
            with torch.no_grad(), self.taps.capture() as real_features:
                v_real = teacher.velocity(teacher.transformer, flow.add_noise(target, noise, sigma_a), sigma_a,
                                          batch.text)
            self.fake_features, self.real_features = list(fake_features), list(real_features)
            losses["loss_g"] = g_hinge(self.disc(self.fake_features, self.grid))
            losses["loss_fm"] = F.mse_loss(v_fake.float(), v_real.float())
            losses["g_scale"] = self.g_scale(losses["loss_consistency"], losses["loss_g"])
            loss = loss + losses["g_scale"] * losses["loss_g"] + params.detail.fm_weight * losses["loss_fm"]
        return losses, loss

    def g_scale(self, consistency: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        """The G term's weight: ``detail.g_weight``, ramped over ``detail.g_warmup_steps``, and with
        ``detail.g_weighting: adaptive`` scaled by VQGAN's ratio of the two losses' gradient norms at the
        output layer, so the hinge term cannot drown the consistency term (paper Eq. 10 leaves it open)."""
        d = self.params.detail
        weight = d.g_weight * (min(1.0, self.step / d.g_warmup_steps) if d.g_warmup_steps else 1.0)
        if d.g_weighting == "fixed":
            return torch.tensor(weight)
        layer = self.output_layer()
        g_cons = torch.autograd.grad(consistency, layer, retain_graph=True)[0]
        g_adv = torch.autograd.grad(g_loss, layer, retain_graph=True)[0]
        return weight * (g_cons.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def output_layer(self) -> torch.nn.Parameter:
        """The weight of the student's output projection (its trainable copy under PE)."""
        if isinstance(self.raw, ParameterEfficientExpert):
            return self.raw._copy_of("proj_out").weight
        return self.raw.get_submodule("proj_out").weight

    def discriminator_step(self, losses: dict[str, torch.Tensor]) -> None:
        """One hinge step of the discriminator heads on the features of this step's G pass."""
        self.accelerator.unwrap_model(self.disc).requires_grad_(True)
        fake_logits = self.disc([f.detach() for f in self.fake_features], self.grid)
        real_logits = self.disc(self.real_features, self.grid)
        losses["loss_d"] = d_hinge(real_logits, fake_logits)
        self.accelerator.backward(losses["loss_d"])
        self.accelerator.clip_grad_norm_(self.disc.parameters(), 1.0)
        self.d_optimizer.step()
        self.d_optimizer.zero_grad(set_to_none=True)

    def train_step(self) -> None:
        acc, d = self.accelerator, self.params.distill
        gen = _generator(self.params, self.plan.role, self.step, acc.process_index)
        batch = _Batch(self.data, self.points, self.ends, d.batch_size, gen, acc.device)
        x_prev = _previous_point(self.data, batch, self.teacher, self.empty)
        self.model.train()
        with acc.autocast():  # bf16/fp16 compute, fp32 master weights
            losses, loss = self.losses(batch, x_prev, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.stage}: loss is {loss.item()} at step {self.step} "
                                     f"({ {k: v.item() for k, v in losses.items()} }); last good checkpoint: "
                                     f"{self.checkpoint}")
        acc.backward(loss)
        # all of the model's parameters (frozen ones have no gradient), which FSDP requires
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), d.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.plan.gf:
            self.discriminator_step(losses)
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(_trainable_of(self.ema), _trainable_of(self.raw), strict=True):
                    e.lerp_(p.detach(), 1 - d.target_ema_decay)
        self.step += 1
        self.bar.update(1)
        if acc.is_main_process and (self.step % d.log_every == 0 or self.step == self.plan.steps):
            metrics = {k: v.detach().item() for k, v in losses.items()} | {"grad_norm": float(grad_norm)}
            log_metrics(metrics, step=self.step)
            self.bar.set_postfix(loss=f"{metrics['loss_consistency']:.4f}")
        if self.buckets is not None and acc.is_main_process and (self.step % d.bucket_every == 0 or self.step == 1):
            tick = time.perf_counter()
            self.buckets.probe(self.raw, self.teacher, self.empty, step=self.step)
            self.probe_seconds += time.perf_counter() - tick
        if self.validating and (self.step % d.validate_every == 0 or self.step == self.plan.steps):
            tick = time.perf_counter()
            self.validate()
            self.probe_seconds += time.perf_counter() - tick
        if self.step % d.checkpoint_every == 0 or self.step == self.plan.steps:
            self.save()

    # ---- validation ---------------------------------------------------------------------------
    def validation_models(self):
        """The models of a 4-step validation sample and the grid indices each one steps over.

        LCM, PCM and the vanilla model sample alone; the detail expert with the (trained) semantic
        expert before it, as DCM samples; the semantic expert with the guided teacher after it (8 Euler
        steps), so its score measures the layout and motion it hands over."""
        n, k = self.params.flow.steps, self.params.boundary
        role, teacher = self.plan.role, self.teacher.transformer
        g = self.params.trajectories.guidance_scale
        if role in ("lcm", "pcm"):
            return [(self.raw, uniform_indices(n, 0, 4), 1.0)]
        if role == "vanilla":
            return [(self.raw, schedule("dcm", 4, n, k), 1.0)]
        semantic_steps, detail_steps = uniform_indices(n, k, 2), uniform_indices(k, 0, 2)
        if role == "semantic":
            return [(self.raw, semantic_steps, 1.0), (teacher, uniform_indices(k, 0, min(k, 8)), g)]
        if self.validation_semantic is None:
            self.validation_semantic = (self.raw.base if isinstance(self.raw, ParameterEfficientExpert)
                                        else load_full_model(self.layout.student("semantic"), self.teacher, "semantic"))
        return [(self.validation_semantic, semantic_steps, 1.0), (self.raw, detail_steps, 1.0)]

    @torch.no_grad()
    def validate(self) -> None:
        """Score a 4-step sample of the validation videos; log it and write ``validation.csv``."""
        from dcm.guidance import initial_noise
        from dcm.world.metrics import aggregate_scores, evaluate_video
        from dcm.world.render import to_video

        items = toy_items("validation", self.params.distill.validate_videos)
        shape = latent_shape(self.params, self.teacher)
        text = self.teacher.encode_prompts([p.text for p, _ in items]).to(self.accelerator.device)
        empty = self.empty.expand(len(items), -1, -1)
        x = initial_noise([s for _, s in items], shape).to(self.accelerator.device)
        self.raw.eval()
        for model, indices, guidance in self.validation_models():
            velocity = self.teacher.guided_velocity(model, text, empty, guidance)
            for a, b in zip(indices[:-1], indices[1:], strict=True):
                x = flow.euler_step(x, velocity(x, self.sigmas[a]), self.sigmas[a], self.sigmas[b])
        world = self.params.world.to_config()
        rows = [evaluate_video(to_video(v), p, world) for v, (p, _) in zip(self.teacher.decode_latents(x), items,
                                                                          strict=True)]
        scores = aggregate_scores(rows)
        row = {"step": self.step, **{k: round(scores[k], 5) for k in ("total", "quality", "semantic")}}
        self.validation_rows = [r for r in self.validation_rows if r["step"] < self.step] + [row]
        write_csv(self.out_dir / VALIDATION, self.validation_rows)
        log_metrics({f"val_{k}": v for k, v in row.items() if k != "step"}, step=self.step)

    # ---- the trained student --------------------------------------------------------------------
    def finish(self) -> dict:
        """Write the trained student and its record (the main process); return the summary."""
        self.bar.close()
        plan, acc = self.plan, self.accelerator
        seconds = self.train_seconds()
        summary = {"steps": plan.steps, "tc": plan.tc, "gf": plan.gf, "trainable_parameters": self.trainable_count,
                   "teacher_parameters": count_parameters(self.teacher.transformer.parameters()),
                   "seconds_per_step": None if seconds is None else seconds / plan.steps}
        full = acc.get_state_dict(self.model)
        if acc.is_main_process:
            if plan.pe:
                self.raw.save(self.out_dir, full)
            else:
                save_full_model(self.raw, full, self.out_dir / STUDENT_MODEL)
            StudentRecord(self.stage, plan.role, "pe" if plan.pe else "full", [[p.start, p.end] for p in self.phases],
                          self.params.boundary, learned_values(self.params, self.stage), self.inputs,
                          summary).write(self.out_dir)
            log_metrics({k: summary[k] for k in ("trainable_parameters", "seconds_per_step") if summary[k] is not None})
        acc.wait_for_everyone()
        return summary


def _trainable_of(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    if isinstance(module, ParameterEfficientExpert):
        return module.trainable_parameters()
    return list(module.parameters())


class _BucketProbe:
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
            batch = _Batch(self.data, pts, ends, self.params.distill.batch_size, gen, empty.device)
            x_prev = _previous_point(self.data, batch, teacher, empty)
            pred = objective.consistency_prediction(batch.x_i, batch.i, batch.end, self.sigmas,
                                                    lambda x, s: teacher.velocity(model, x, s, batch.text))
            target = objective.consistency_target(x_prev, batch.i, batch.end, self.sigmas,
                                                  lambda x, s: teacher.velocity(model, x, s, batch.text))
            loss = objective.pseudo_huber(pred, target, c)
            grads = torch.autograd.grad(loss, _trainable_of(model), allow_unused=True)
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)).item()
            row = {"step": step, "bucket": b, "sigma_low": lo, "sigma_high": hi, "loss": loss.item(), "grad_norm": norm}
            self.rows.append(row)
            log_metrics({f"bucket_loss/{b:02d}": row["loss"], f"bucket_grad_norm/{b:02d}": norm}, step=step)
        self.rows = [r for r in self.rows if r["step"] <= step]
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
