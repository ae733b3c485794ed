"""One training loop for every consistency student: DCM's experts, the vanilla model, LCM, PCM.

What differs between the methods (their phases, extra losses and extra state) lives in their
objects (:mod:`dcm.distill.methods`); the loop here draws the batch, takes the student's step,
keeps the target network, the probes and the checkpoint. Runs through accelerate (one CPU process
by default, ``accelerate launch`` for more). Only the main process logs to MLflow and writes
checkpoints. Everything random in step ``k`` is drawn from a generator seeded by
``(seed, role, k, process)``, so a run resumed from a checkpoint ends with exactly the weights of
an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
import zlib

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from dcm import flow
from dcm.config import Params, fingerprint
from dcm.distill import objective
from dcm.distill.batches import Batch, load_source, previous_point, step_generator
from dcm.distill.methods import Losses, StudentPlan, method_for
from dcm.distill.phases import trainable_points
from dcm.distill.probes import BucketProbe, CollapseError, ValidationCurve
from dcm.distill.student import Student, build_student
from dcm.experts import count_parameters
from dcm.io import keep_copy, load_checkpoint, save_checkpoint
from dcm.layout import CHECKPOINT, HEALTHY_CHECKPOINT, STUDENT_MODEL, Layout
from dcm.models import load_backbone
from dcm.students import (StudentRecord, check_record, expert_base_name, learned_values, save_full_model,
                          source_fingerprint)
from dcm.tracking import log_metrics

log = logging.getLogger(__name__)


def check_inputs(params: Params, stage: str, layout: Layout = Layout()) -> None:
    """Fail before anything is written when the stage's inputs are missing or were made with other
    params: the teacher, the training source (its manifest's spec), the semantic expert under PE."""
    from dcm.data import trajectories, video_dataset
    from dcm.models import check_teacher_dir, teacher_expert_boundary

    plan = StudentPlan.for_stage(stage, params)
    if plan is None:
        return
    check_teacher_dir(layout.teacher_model)
    source = params.distill.source
    {"trajectories": trajectories, "data": video_dataset}[source].check_manifest(layout.source(source), params)
    switch = teacher_expert_boundary(layout.teacher_model)
    if switch is not None:
        warn_off_teacher_switch(params, switch)
    if plan.pe and switch is None:  # the PE detail expert on the semantic one (on Wan2.2, on its transformer_2)
        record = StudentRecord.read(layout.student("semantic"), "semantic")
        check_record(record, params, layout)
    if params.distill.validate_every:
        from dcm.data.validation_set import check_exists

        check_exists(layout.validation_set)


def warn_off_teacher_switch(params: Params, switch: float) -> None:
    """Say what a ``boundary`` other than a two-expert teacher's own switch means (allowed)."""
    sigmas = flow.sigma_grid(params.flow.steps, params.flow.shift)
    own = flow.last_index_below(sigmas, switch)
    if params.boundary != own:
        side = "semantic expert (from transformer)" if params.boundary < own else "detail expert (from transformer_2)"
        log.warning("boundary = %d, the teacher switches transformers at t = %g, grid index %d (boundary = %d puts "
                    "every step of each expert's phase on the transformer it starts from): the %s also learns "
                    "steps the teacher takes with its other transformer", params.boundary, switch, own, own, side)


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
    """One student's training: models, data and the resumable state, set up once; :meth:`train_step`
    takes one step of the consistency objective (paper Eq. 6-7) with the method's own losses."""

    def __init__(self, params: Params, stage: str, plan: StudentPlan, layout: Layout):
        self.params, self.stage, self.plan = params, stage, plan
        self.out_dir = layout.student(stage)
        d = params.distill
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                       mixed_precision={"fp32": "no"}.get(d.mixed_precision, d.mixed_precision))
        device = self.accelerator.device
        self.teacher = load_backbone(layout.teacher_model)
        self.teacher.transformer.requires_grad_(False).eval().to(device)
        self.data = load_source(params, layout, self.teacher)
        self.sigmas = self.data.sigmas.to(device)
        self.empty = self.teacher.encode_prompts([""]).to(device)
        self.inputs = {d.source: source_fingerprint(layout, d.source)}
        if (plan.pe or plan.lora) and expert_base_name(self.teacher, plan.lora, plan.role == "detail") == "semantic":
            self.inputs["semantic"] = StudentRecord.read(layout.student("semantic"), "semantic").fingerprint
        self.fingerprint = fingerprint({"params": learned_values(params, stage), "inputs": self.inputs})
        # Random initialisation (LoRA, discriminator) from a generator fixed by the params alone: the
        # global one's state here depends on what the libraries loaded so far happened to draw.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(f"{d.seed}/{plan.role}/init".encode()))
            fsdp = self.accelerator.distributed_type == DistributedType.FSDP  # shards what it wraps: no shared base
            self.student = Student(*build_student(plan, params, self.teacher, layout, share=not fsdp), params, plan.lr)
            self.method = method_for(plan, params, self.teacher, layout, self.sigmas)
        self.points, self.ends = trainable_points(self.method.phases, self.data.drawable)
        validation_set = None
        if d.validate_every:
            from dcm.data.validation_set import load as load_validation_set

            validation_set = load_validation_set(params, self.teacher, layout.validation_set)
        self.validation = ValidationCurve(params, self.teacher, self.method, self.sigmas, self.empty, self.out_dir,
                                          validation_set)
        self.step = 0
        self.seconds_before: float | None = 0.0  # None: resumed from a checkpoint without a clock
        self.checkpoint = self.out_dir / CHECKPOINT
        self.healthy = self.out_dir / HEALTHY_CHECKPOINT  # the checkpoint at the newest healthy validation

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
            for part in (self.student, self.method, self.validation):
                part.load_state_dict(ckpt)
            self.step, self.seconds_before = ckpt["step"], ckpt.get("seconds")
            log.info("%s: resuming from %s at step %d", self.stage, self.checkpoint, self.step)
        acc = self.accelerator
        self.sharded = acc.distributed_type == DistributedType.FSDP
        self.student.prepare(acc, self.sharded)
        self.method.prepare(acc, self.student.raw, self.sharded)
        self.rank_optimizers = self.out_dir / f"optimizer-rank{acc.process_index}.safetensors"  # FSDP: its shards
        if ckpt is not None and ckpt["optimizer"] is None:
            shards = load_checkpoint(self.rank_optimizers)
            self.student.load_optimizer_shards(shards)
            self.method.load_optimizer_shards(shards)
        # Fig. 2 of the paper: one model over the whole trajectory (vanilla, LCM), loss and grads by noise level
        self.buckets = (BucketProbe(self.params, self.data, self.points, self.ends, self.sigmas, self.out_dir)
                        if self.method.probes_buckets else None)
        self.bar = tqdm(total=self.plan.steps, initial=self.step, desc=self.stage, disable=not acc.is_main_process)
        self.started, self.probe_seconds = time.perf_counter(), 0.0
        # the validation curve (checked by the main process; not under FSDP, where the model runs on every
        # process at once): rows of the steps taken so far survive a resume
        self.validating = self.params.distill.validate_every > 0 and not self.sharded
        if self.params.distill.validate_every > 0 and self.sharded:
            log.warning("%s: no validation curve or collapse guard under FSDP (distill.validate_every is ignored)",
                        self.stage)
        if self.validating and self.step == 0:
            self.validate()  # the curve starts where the student starts

    def train_seconds(self) -> float | None:
        """Training time (probes excluded), carried through checkpoints."""
        if self.seconds_before is None:
            return None
        return self.seconds_before + time.perf_counter() - self.started - self.probe_seconds

    def save(self) -> None:
        acc = self.accelerator
        state = {"fingerprint": self.fingerprint, "step": self.step, "seconds": self.train_seconds(),
                 **self.validation.state_dict(), **self.student.state_dict(acc, self.sharded),
                 **self.method.state_dict(acc, self.sharded)}  # gathering: every process takes part under FSDP
        if self.sharded:
            save_checkpoint(self.rank_optimizers, self.student.optimizer_shards() | self.method.optimizer_shards())
        if acc.is_main_process:
            save_checkpoint(self.checkpoint, state)
        acc.wait_for_everyone()

    # ---- one step -----------------------------------------------------------------------------
    def losses(self, batch: Batch, x_prev: torch.Tensor, gen: torch.Generator) -> Losses:
        """The student's losses on one batch (``x_prev``: the teacher's next points)."""
        teacher, student = self.teacher, self.student
        pred = objective.consistency_prediction(batch.x_i, batch.i, batch.end, self.sigmas,
                                                lambda x, s: teacher.velocity(student.model, x, s, batch.text))
        target = objective.consistency_target(x_prev, batch.i, batch.end, self.sigmas,
                                              lambda x, s: teacher.velocity(student.target, x, s, batch.text))
        return self.method.losses(pred, target, batch.text, gen, self.step)

    def train_step(self) -> None:
        acc, d, student = self.accelerator, self.params.distill, self.student
        gen = step_generator(self.params, self.plan.role, self.step, acc.process_index)
        batch = Batch(self.data, self.points, self.ends, d.batch_size, gen, self.empty, acc.device)
        x_prev = previous_point(self.data, batch, self.teacher, self.empty)
        student.model.train()
        with acc.autocast():  # bf16/fp16 compute, fp32 master weights
            losses = self.losses(batch, x_prev, gen)
        if not torch.isfinite(losses.total):
            terms = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.terms.items())
            self.stop_collapsed(f"non-finite loss ({terms})")
        acc.backward(losses.total)
        # all of the model's parameters (frozen ones have no gradient), which FSDP requires
        grad_norm = acc.clip_grad_norm_(student.model.parameters(), d.grad_clip)
        student.optimizer.step()
        student.optimizer.zero_grad(set_to_none=True)
        losses.terms.update(self.method.after_student_step(losses))
        student.update_target()
        self.step += 1
        self.bar.update(1)
        if acc.is_main_process and (self.step % d.log_every == 0 or self.step == self.plan.steps):
            metrics = {k: v.detach().item() for k, v in losses.terms.items()} | {"grad_norm": float(grad_norm)}
            log_metrics(metrics, step=self.step)
            self.bar.set_postfix(loss=f"{metrics['loss_consistency']:.4f}")
        if self.buckets is not None and acc.is_main_process and (self.step % d.bucket_every == 0 or self.step == 1):
            self.timed_probe(lambda: self.buckets.probe(student.raw, self.teacher, self.empty, step=self.step))
        validated = self.validating and (self.step % d.validate_every == 0 or self.step == self.plan.steps)
        if validated:
            self.validate()
        elif self.step % d.checkpoint_every == 0 or self.step == self.plan.steps:
            self.save()

    def validate(self) -> None:
        """Check the student on the validation set (main process); every process stops on collapse, else
        they checkpoint and the main one keeps that checkpoint as the newest healthy one."""
        from accelerate.utils import broadcast_object_list

        acc, collapse = self.accelerator, [None]
        if acc.is_main_process:
            self.timed_probe(lambda: self.validation.check(self.student.raw, self.step))
            collapse = [self.validation.collapse()]
        collapse = broadcast_object_list(collapse)  # the other processes learn the verdict
        if collapse[0] is not None:
            self.stop_collapsed(collapse[0])
        self.save()
        if acc.is_main_process:
            keep_copy(self.checkpoint, self.healthy)

    def stop_collapsed(self, what: str) -> None:
        kept = load_checkpoint(self.healthy) if self.healthy.exists() else None
        where = (f"the last healthy checkpoint (step {kept['step']}) is kept at {self.healthy}" if kept is not None
                 else "no healthy checkpoint was kept (no validation passed; distill.validate_every)")
        raise CollapseError(f"{self.stage} collapsed at step {self.step}: {what}; {where}. Lower the learning rate "
                            f"({self.stage}.lr) or see the curve in {self.validation.path}")

    def timed_probe(self, probe) -> None:
        """Run ``probe``; its time is not training time."""
        tick = time.perf_counter()
        probe()
        self.probe_seconds += time.perf_counter() - tick

    # ---- the trained student --------------------------------------------------------------------
    def finish(self) -> dict:
        """Write the trained student and its record (the main process); return the summary."""
        self.bar.close()
        plan, acc = self.plan, self.accelerator
        seconds = self.train_seconds()
        summary = {"steps": plan.steps, "tc": plan.tc, "gf": plan.gf,
                   "trainable_parameters": self.student.trainable_count,
                   "teacher_parameters": count_parameters(self.teacher.teacher_expert(plan.role == "detail").parameters()),
                   "seconds_per_step": None if seconds is None else seconds / plan.steps}
        full = acc.get_state_dict(self.student.model)
        if acc.is_main_process:
            if plan.pe or plan.lora:
                self.student.raw.save(self.out_dir, full)
            else:
                save_full_model(self.student.raw, full, self.out_dir / STUDENT_MODEL)
            StudentRecord(self.stage, plan.role, plan.kind,
                          [[p.start, p.end] for p in self.method.phases], self.params.boundary,
                          learned_values(self.params, self.stage), self.inputs, summary).write(self.out_dir)
            log_metrics({k: summary[k] for k in ("trainable_parameters", "seconds_per_step") if summary[k] is not None})
        acc.wait_for_everyone()
        return summary
