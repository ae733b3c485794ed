"""One training loop for every consistency student: DCM's experts, the vanilla model, LCM, PCM.

Runs through accelerate (one CPU process by default, ``accelerate launch`` for more). Only the
main process logs to MLflow and writes checkpoints. Everything random in step ``k`` is drawn
from a generator seeded by ``(seed, role, k, process)``, so a run resumed from a checkpoint
ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import csv
import json
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
from dcm.config import Params, fingerprint
from dcm.distill import objective
from dcm.distill.discriminator import Discriminator, FeatureTaps, d_hinge, g_hinge
from dcm.distill.experts import ParameterEfficientExpert, count_parameters
from dcm.distill.phases import Role, phases_for, trainable_points
from dcm.io import atomic_path, atomic_torch_save, atomic_write_text
from dcm.models import load_backbone
from dcm.models.base import Backbone
from dcm.tracking import log_metrics
from dcm.trajectories import TrajectorySpec, Trajectories, latent_shape, load as load_trajectories

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
EXPERT_INFO = "expert.json"
_COMMON = ("world", "flow", "model", "trajectories", "distill")
_FINGERPRINT_KEYS = {  # the params each stage's checkpoint depends on
    "semantic": (*_COMMON, "boundary", "ablation.od", "ablation.tc", "semantic"),
    "detail": (*_COMMON, "boundary", "ablation", "semantic", "detail"),
    "lcm": (*_COMMON, "lcm"),
    "pcm": (*_COMMON, "pcm"),
}
# Settings that do not change what the steps taken so far learned (the lr schedule is constant).
_FINGERPRINT_IGNORE = ("distill.checkpoint_every", "distill.log_every", "distill.bucket_every",
                       "semantic.steps", "detail.steps", "lcm.steps", "pcm.steps")


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


def load_full_student(directory: Path, backbone: Backbone) -> torch.nn.Module:
    """A fully fine-tuned student (``<stage>/model``), of the backbone's transformer class."""
    path = directory / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no trained student at {path} (expected {path / 'config.json'}); run its stage first")
    return backbone.load_transformer(path)


def build_student(plan: StudentPlan, params: Params, teacher: Backbone, semantic_dir: Path):
    """The trainable module and its trainable parameters."""
    if plan.pe:
        base = load_full_student(semantic_dir, teacher)
        if params.distill.gradient_checkpointing:
            teacher.enable_gradient_checkpointing(base)
        d = params.detail
        student = ParameterEfficientExpert(base, teacher.timestep_layers, d.lora_rank, d.lora_alpha, d.lora_targets)
        return student, student.trainable_parameters()
    student = copy.deepcopy(teacher.transformer).requires_grad_(True)
    if params.distill.gradient_checkpointing:
        teacher.enable_gradient_checkpointing(student)
    return student, list(student.parameters())


def save_full_model(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``model``'s config and ``state_dict`` (gathered from every process) as a diffusers
    model directory. ``save_pretrained`` reads ``model.state_dict()`` itself, which under FSDP is
    a collective that only the main process would join; shards are named as diffusers names them."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    model.save_config(path)
    split = split_torch_state_dict_into_shards(state_dict, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                                               max_shard_size="10GB")
    for filename, names in split.filename_to_tensors.items():
        with atomic_path(path / filename) as tmp:
            save_file({n: state_dict[n].contiguous() for n in names}, str(tmp), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        atomic_write_text(path / "diffusion_pytorch_model.safetensors.index.json", json.dumps(index, indent=2) + "\n")


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
            out[idx.to(out.device)] = objective.jump(x, velocity(x, s), s, data.sigmas[prev[idx]].to(out.device))
    return out


def distill(params: Params, stage: str, out_dir: Path, teacher_dir: Path, trajectory_dir: Path,
            semantic_dir: Path | None = None) -> dict:
    """Train the student of ``stage`` and write it to ``out_dir``. Returns a summary."""
    plan = StudentPlan.for_stage(stage, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan is None:
        info = {"stage": stage, "kind": "none", "reason": "ablation.od = false: the semantic stage trained one "
                                                          "vanilla model for the whole trajectory"}
        atomic_write_text(out_dir / EXPERT_INFO, json.dumps(info, indent=2) + "\n")
        return info
    d = params.distill
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision={"fp32": "no"}.get(d.mixed_precision, d.mixed_precision))
    teacher = load_backbone(teacher_dir)
    teacher.transformer.requires_grad_(False).eval().to(accelerator.device)
    shape = latent_shape(params, teacher)
    if plan.tc and shape[1] <= params.semantic.tc_lag:
        raise ValueError(f"semantic.tc_lag = {params.semantic.tc_lag} needs more latent frames than that; this "
                         f"backbone's latents have {shape[1]} (shape {shape}); lower semantic.tc_lag or "
                         "turn ablation.tc off")
    data = load_trajectories(trajectory_dir, TrajectorySpec.from_params(params, shape))
    sigmas = data.sigmas.to(accelerator.device)
    phases = phases_for(plan.role, params.flow.steps, params.boundary, params.pcm.phases)
    points, ends = trainable_points(phases, data.stored_mask)
    empty = teacher.encode_prompts([""]).to(accelerator.device)

    # Random initialisation (LoRA, discriminator) from a generator fixed by the params alone: the
    # global one's state here depends on what the libraries loaded so far happened to draw.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{d.seed}/{plan.role}/init".encode()))
        student, trainable = build_student(plan, params, teacher, semantic_dir or out_dir.parent / "semantic")
        taps = disc = d_optimizer = None
        if plan.gf:
            taps = FeatureTaps(teacher.feature_blocks(), params.detail.feature_stride)
            disc = Discriminator(teacher.feature_dim(), len(taps.indices), params.detail.head_width)
            d_optimizer = torch.optim.AdamW(disc.parameters(), lr=params.detail.d_lr, betas=(0.0, 0.999))
    if plan.gf and d.gradient_checkpointing:  # the GAN and feature losses backpropagate through the teacher
        teacher.enable_gradient_checkpointing(teacher.transformer)
    optimizer = torch.optim.AdamW(trainable, lr=plan.lr, weight_decay=d.weight_decay)
    ema = copy.deepcopy(student).requires_grad_(False) if d.target == "ema" else None

    step = 0
    ckpt_path = out_dir / CHECKPOINT
    fp = fingerprint(params, _FINGERPRINT_KEYS[stage], _FINGERPRINT_IGNORE) + data.manifest_sha256[:16]
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
    if ckpt is not None and (ckpt.get("fingerprint") != fp or ckpt["step"] > plan.steps):
        log.warning("%s: %s was written with other params or trajectories, or past %d steps; starting over",
                    stage, ckpt_path, plan.steps)
        ckpt = None
    if ckpt is not None:
        _load_student_state(student, ckpt["student"])
        if ckpt["optimizer"] is not None:  # else FSDP: each rank reloads its shard after prepare()
            optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            _load_student_state(ema, ckpt["ema"])
        if disc is not None:
            disc.load_state_dict(ckpt["disc"])
            if ckpt["d_optimizer"] is not None:
                d_optimizer.load_state_dict(ckpt["d_optimizer"])
        step = ckpt["step"]
        log.info("%s: resuming from %s at step %d", stage, ckpt_path, step)

    model, optimizer = accelerator.prepare(student, optimizer)
    if disc is not None:
        disc, d_optimizer = accelerator.prepare(disc, d_optimizer)
    raw = accelerator.unwrap_model(model)
    # the online target calls the prepared model: under FSDP the unwrapped one holds only this rank's shards
    target_net = ema if ema is not None else model
    sharded = accelerator.distributed_type == DistributedType.FSDP
    rank_optimizers = out_dir / f"optimizer-rank{accelerator.process_index}.pt"  # FSDP: this rank's shards
    if ckpt is not None and ckpt["optimizer"] is None:
        shards = torch.load(rank_optimizers, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(shards["optimizer"])
        if d_optimizer is not None:
            d_optimizer.load_state_dict(shards["d_optimizer"])

    def save() -> None:
        full = accelerator.get_state_dict(model)  # collectives under FSDP: every rank takes part
        disc_full = None if disc is None else accelerator.get_state_dict(disc)
        if sharded:
            atomic_torch_save({"optimizer": optimizer.state_dict(),
                               "d_optimizer": None if d_optimizer is None else d_optimizer.state_dict()},
                              rank_optimizers)
        if accelerator.is_main_process:
            state = {"fingerprint": fp, "step": step, "seconds": train_seconds(),
                     "student": _student_state(raw, full),
                     "optimizer": None if sharded else optimizer.state_dict()}
            if ema is not None:
                state["ema"] = _student_state(ema)
            if disc is not None:
                state["disc"] = disc_full
                state["d_optimizer"] = None if sharded else d_optimizer.state_dict()
            atomic_torch_save(state, ckpt_path)
        accelerator.wait_for_everyone()

    # Fig. 2 of the paper: one model over the whole trajectory (vanilla, LCM), loss and grads by noise level
    buckets = _BucketProbe(params, data, points, ends, sigmas, out_dir) if plan.role in ("vanilla", "lcm") else None
    detail_sigmas = sigmas[1:params.boundary + 1]
    bar = tqdm(total=plan.steps, initial=step, desc=stage, disable=not accelerator.is_main_process)
    # training time (probes excluded) carried through checkpoints, so a resumed run reports the whole run
    # (None: resumed from a checkpoint written before dcm kept this figure)
    seconds_before = 0.0 if ckpt is None else ckpt.get("seconds")
    started, probe_seconds = time.perf_counter(), 0.0

    def train_seconds() -> float | None:
        if seconds_before is None:
            return None
        return seconds_before + time.perf_counter() - started - probe_seconds

    while step < plan.steps:
        gen = _generator(params, plan.role, step, accelerator.process_index)
        batch = _Batch(data, points, ends, d.batch_size, gen, accelerator.device)
        x_prev = _previous_point(data, batch, teacher, empty)
        model.train()
        with accelerator.autocast():  # bf16/fp16 compute, fp32 master weights
            pred = objective.consistency_prediction(batch.x_i, batch.i, batch.end, sigmas,
                                                    lambda x, s: teacher.velocity(model, x, s, batch.text))
            target = objective.consistency_target(x_prev, batch.i, batch.end, sigmas,
                                                  lambda x, s: teacher.velocity(target_net, x, s, batch.text))
            losses = {"loss_consistency": objective.pseudo_huber(pred, target, d.huber_c)}
            loss = losses["loss_consistency"]
            if plan.tc:
                losses["loss_tc"] = objective.temporal_coherence(pred, target, params.semantic.tc_lag)
                loss = loss + params.semantic.tc_weight * losses["loss_tc"]
            if plan.gf:
                sigma_a = detail_sigmas[torch.randint(len(detail_sigmas), (d.batch_size,), generator=gen)]
                noise = torch.randn(pred.shape, generator=gen).to(pred.device)
                grid = teacher.token_grid(pred.shape)
                accelerator.unwrap_model(disc).requires_grad_(False)
                with taps.capture() as fake_features:
                    v_fake = teacher.velocity(teacher.transformer, flow.add_noise(pred, noise, sigma_a), sigma_a, batch.text)
                with torch.no_grad(), taps.capture() as real_features:
                    v_real = teacher.velocity(teacher.transformer, flow.add_noise(target, noise, sigma_a), sigma_a,
                                              batch.text)
                fake_features, real_features = list(fake_features), list(real_features)
                losses["loss_g"] = g_hinge(disc(fake_features, grid))
                losses["loss_fm"] = F.mse_loss(v_fake.float(), v_real.float())
                loss = loss + params.detail.g_weight * losses["loss_g"] + params.detail.fm_weight * losses["loss_fm"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage}: loss is {loss.item()} at step {step} "
                                     f"({ {k: v.item() for k, v in losses.items()} }); last good checkpoint: {ckpt_path}")
        accelerator.backward(loss)
        # all of the model's parameters (frozen ones have no gradient), which FSDP requires
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), d.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if plan.gf:
            accelerator.unwrap_model(disc).requires_grad_(True)
            fake_logits = disc([f.detach() for f in fake_features], grid)
            real_logits = disc(real_features, grid)
            losses["loss_d"] = d_hinge(real_logits, fake_logits)
            accelerator.backward(losses["loss_d"])
            accelerator.clip_grad_norm_(disc.parameters(), 1.0)
            d_optimizer.step()
            d_optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(_trainable_of(ema), _trainable_of(raw), strict=True):
                    e.lerp_(p.detach(), 1 - d.target_ema_decay)
        step += 1
        bar.update(1)
        if accelerator.is_main_process and (step % d.log_every == 0 or step == plan.steps):
            metrics = {k: v.detach().item() for k, v in losses.items()} | {"grad_norm": float(grad_norm)}
            log_metrics(metrics, step=step)
            bar.set_postfix(loss=f"{metrics['loss_consistency']:.4f}")
        if buckets is not None and accelerator.is_main_process and (step % d.bucket_every == 0 or step == 1):
            tick = time.perf_counter()
            buckets.probe(raw, teacher, empty, step=step)
            probe_seconds += time.perf_counter() - tick
        if step % d.checkpoint_every == 0 or step == plan.steps:
            save()
    bar.close()

    summary = {"stage": stage, "role": plan.role, "kind": "pe" if plan.pe else "full", "steps": plan.steps,
               "phases": [[p.start, p.end] for p in phases], "boundary": params.boundary,
               "tc": plan.tc, "gf": plan.gf, "trainable_parameters": count_parameters(trainable),
               "teacher_parameters": count_parameters(teacher.transformer.parameters()),
               "seconds_per_step": None if train_seconds() is None else train_seconds() / plan.steps}
    full = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        if plan.pe:
            raw.save(out_dir, full)
        else:
            save_full_model(raw, full, out_dir / "model")
        atomic_write_text(out_dir / EXPERT_INFO, json.dumps(summary, indent=2) + "\n")
        log_metrics({k: summary[k] for k in ("trainable_parameters", "seconds_per_step") if summary[k] is not None})
    accelerator.wait_for_everyone()
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
        self.path = out_dir / "buckets.csv"
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
