"""Training the tiny teacher by flow matching on the toy world.

Data is rendered on the fly, and the batch of step ``k`` depends only on ``(seed, k)``, so a
run resumed from a checkpoint sees exactly the data an uninterrupted run would have seen.
Training videos use the training seeds of :mod:`dcm.data.splits`; the checks during training sample
the validation split, so choosing a recipe never looks at the held-out set.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from dcm import flow
from dcm.config import Params, fingerprint, stage_values
from dcm.data.splits import TRAIN_SEED_END, toy_items
from dcm.io import load_checkpoint, save_checkpoint, write_csv
from dcm.layout import CHECKPOINT, VALIDATION
from dcm.models.tiny import TinyBackbone, build_tiny_backbone
from dcm.teacher.probes import accuracy, prompt_swap_probe, sample_videos
from dcm.tracking import log_metrics
from dcm.world.grammar import all_prompts
from dcm.world.render import render_batch

log = logging.getLogger(__name__)

TRAINING_SWAP_SIGMAS = (0.7, 1.0)  # where the checks during training run the prompt-swap probe
# Settings that do not change what the steps taken so far learned: raising teacher.steps (and adding
# the last step to teacher.restarts) continues a finished run; the schedule a checkpoint was trained
# with is checked separately (``lr_ratios`` in the checkpoint).
FINGERPRINT_IGNORE = ("model.path", "teacher.steps", "teacher.restarts", "teacher.restart_lr_ratio", "teacher.checkpoint_every", "teacher.eval_every", "teacher.eval_prompts",
                      "teacher.eval_sample_steps", "teacher.eval_guidance_scale")


class PromptTable:
    """Embeddings of every toy prompt and of the empty prompt, computed once (the encoder is frozen)."""

    def __init__(self, backbone: TinyBackbone):
        self.prompts = all_prompts()
        texts = [p.text for p in self.prompts] + [""]
        self.embeddings = backbone.encode_prompts(texts)

    @property
    def empty(self) -> int:
        return len(self.prompts)


@dataclass
class TrainState:
    step: int = 0
    seconds: float = 0.0
    validation: list[dict] = field(default_factory=list)  # one row per check: step, minutes, accuracies


def fingerprint_ignore(params: Params) -> tuple[str, ...]:
    """:data:`FINGERPRINT_IGNORE`, and ``flow.shift`` when the training noise levels have their own
    shift (``teacher.train_shift``): the sampling grid then changes how the teacher is sampled and
    checked, not what its training steps learned."""
    return FINGERPRINT_IGNORE + (("flow.shift",) if params.teacher.train_shift is not None else ())


def lr_lambda(params: Params):
    """Linear warm-up, then a cosine down to ``min_lr_ratio`` in each segment between restarts.

    The first segment ends at the first restart whatever ``steps`` is, so continuing a finished
    run (its last step added to ``restarts``) and training the same params from scratch take the
    same steps.
    """
    t = params.teacher
    ends = [*t.restarts, t.steps]

    def fn(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        segment = next((i for i, end in enumerate(ends) if step < end), len(ends) - 1)
        start = t.warmup_steps if segment == 0 else ends[segment - 1]
        peak = 1.0 if segment == 0 else t.restart_lr_ratio
        progress = min(1.0, (step - start) / max(1, ends[segment] - start))
        return t.min_lr_ratio + (peak - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def training_batch(params: Params, table: PromptTable, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean videos, text embeddings, noise and sigmas for optimizer step ``step``."""
    t = params.teacher
    gen = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
    idx = torch.randint(len(table.prompts), (t.batch_size,), generator=gen).tolist()
    seeds = torch.randint(TRAIN_SEED_END, (t.batch_size,), generator=gen).tolist()
    prompts = [table.prompts[i] for i in idx]
    x0 = render_batch(prompts, seeds, params.world.to_config())
    drop = torch.rand(t.batch_size, generator=gen) < t.caption_dropout
    text = table.embeddings[[table.empty if d else i for i, d in zip(idx, drop.tolist(), strict=True)]]
    noise = torch.randn(x0.shape, generator=gen)
    sigma = flow.sample_training_sigmas(
        t.batch_size, t.train_shift or params.flow.shift, logit_normal=t.timestep_sampling == "logit_normal",
        mean=t.logit_mean, std=t.logit_std, generator=gen,
    )
    if t.pure_noise_share:  # the first samples of the batch at sigma 1: the prompt alone decides the layout
        sigma[: round(t.pure_noise_share * t.batch_size)] = 1.0
    return x0, text, noise, sigma


def teacher_loss(velocity: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                 sigma: torch.Tensor, kind: str) -> torch.Tensor:
    """``teacher.loss``: MSE of the velocity, or of the one-step estimate ``x_t - sigma * v`` of ``x0``."""
    if kind == "sample":
        s = sigma.view(-1, *([1] * (x_t.ndim - 1)))
        return F.mse_loss(x_t - s * velocity, x0)
    return F.mse_loss(velocity, flow.velocity_target(x0, noise))


def train_teacher(params: Params, out_dir: Path) -> TinyBackbone:
    """Train (or resume) the teacher; write checkpoints to ``out_dir`` and the EMA model to
    ``out_dir / 'model'``. Returns the backbone holding the EMA weights."""
    t = params.teacher
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    backbone = build_tiny_backbone(params.model.tiny, seed=t.seed)
    model = backbone.transformer
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.99))
    schedule = lr_lambda(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    state = TrainState()
    ckpt_path = out_dir / CHECKPOINT
    fp = fingerprint(stage_values(params, "teacher", ignore=fingerprint_ignore(params)))
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None and (ckpt.get("fingerprint") != fp or ckpt["state"]["step"] > t.steps):
        log.warning("%s was written with other params, or past %d steps; training from scratch", ckpt_path, t.steps)
        ckpt = None
    if ckpt is not None and any(not math.isclose(schedule(k), r, rel_tol=1e-9) for k, r in enumerate(ckpt.get("lr_ratios", []))):
        log.warning("%s was trained with another learning-rate schedule (teacher.steps or teacher.restarts changed "
                    "before its step %d); training from scratch", ckpt_path, ckpt["state"]["step"])
        ckpt = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = TrainState(**ckpt["state"])
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * schedule(state.step)  # the saved rate is the old schedule's, if it restarts here
        log.info("resuming teacher training from %s at step %d", ckpt_path, state.step)
    model, optimizer = accelerator.prepare(model, optimizer)
    table = PromptTable(backbone)
    eval_items = toy_items("validation", t.eval_prompts)

    def save() -> None:
        if accelerator.is_main_process:
            save_checkpoint(ckpt_path, {
                "model": accelerator.unwrap_model(model).state_dict(), "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "state": state.__dict__, "fingerprint": fp,
                "lr_ratios": [schedule(k) for k in range(state.step)],
            })

    def check() -> None:
        """Sample the validation videos with the EMA weights; score them and run the swap probe."""
        videos = sample_videos(backbone, ema, eval_items, params, t.eval_sample_steps, t.eval_guidance_scale)
        acc = accuracy(videos, eval_items, params)
        swap = {f"swap_{k}@{row['sigma']}": v for row in prompt_swap_probe(
            backbone, ema, eval_items[:16], params, list(TRAINING_SWAP_SIGMAS)) for k, v in row.items() if k != "sigma"}
        log_metrics({**acc, **swap, "train_minutes": state.seconds / 60}, step=state.step)
        state.validation.append({"step": state.step, "train_minutes": round(state.seconds / 60, 2), **acc, **swap})
        write_csv(out_dir / VALIDATION, state.validation)
        save()
        bar.write(f"step {state.step}: " + ", ".join(f"{k}={v:.2f}" for k, v in acc.items())
                  + f" ({state.seconds / 60:.1f} min)")

    def check_due() -> bool:
        done = bool(state.validation) and state.validation[-1]["step"] == state.step
        return (accelerator.is_main_process and state.step > 0 and not done
                and (state.step % t.eval_every == 0 or state.step == t.steps))

    bar = tqdm(total=t.steps, initial=state.step, desc="teacher", disable=not accelerator.is_main_process)
    if check_due():  # killed between its checkpoint and its check
        check()
    while state.step < t.steps:
        tick = time.perf_counter()
        model.train()
        x0, text, noise, sigma = training_batch(params, table, state.step)
        x_t = flow.add_noise(x0, noise, sigma)
        pred = backbone.velocity(model, x_t, sigma, text)
        loss = teacher_loss(pred.float(), x_t, x0, noise, sigma, t.loss)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher loss is {loss.item()} at step {state.step}; last good checkpoint: {ckpt_path}")
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(t.ema_decay, (1 + state.step) / (10 + state.step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), accelerator.unwrap_model(model).parameters(), strict=True):
                e.lerp_(p.detach(), 1 - decay)
        state.step += 1
        state.seconds += time.perf_counter() - tick
        bar.update(1)
        metrics = {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
        if state.step % 10 == 0:
            log_metrics(metrics, step=state.step)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if state.step % t.checkpoint_every == 0 or state.step == t.steps:
            save()
        if check_due():
            check()
    bar.close()
    backbone.transformer = ema
    if accelerator.is_main_process:
        backbone.save_pretrained(out_dir / "model")
    log_metrics({"train_minutes": state.seconds / 60}, step=state.step)
    return backbone
