"""The fixed validation set every student is compared with while it trains (stage ``validation``).

``distill.validate_videos`` (prompt, seed) pairs: on the toy world its validation split
(:func:`dcm.data.splits.toy_items`), else the training prompts (``trajectories.prompt_file``) with
validation seeds. For each: its text embedding, its initial noise, and the teacher's own
``flow.steps``-step guided sample from that noise, made once and stored in one ``safetensors``
file, so that every check of every student compares its few-step sample from the same noise with
the same teacher sample (PSNR, SSIM, and the statistics that show collapse).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dcm import flow
from dcm.config import Params
from dcm.data.splits import split_seeds, toy_items
from dcm.errors import DcmError
from dcm.guidance import initial_noise
from dcm.io import atomic_path, write_json
from dcm.models.base import Backbone

TENSORS = "validation.safetensors"
ITEMS = "items.json"


class ValidationSetError(DcmError, RuntimeError):
    """A validation set that is missing or was made with other settings."""


def validation_items(params: Params) -> list[tuple[str, int]]:
    """The (prompt, seed) pairs of the validation set."""
    n = params.distill.validate_videos
    if params.model.toy_world and not params.trajectories.prompt_file:
        return [(prompt.text, seed) for prompt, seed in toy_items("validation", n)]
    from dcm.data.trajectories import prompt_set

    prompts = [p for p, _ in prompt_set(params)]
    return [(prompts[i % len(prompts)], seed) for i, seed in enumerate(split_seeds("validation", n))]


def _spec(params: Params, shape: tuple[int, ...]) -> dict:
    second = params.trajectories.guidance_scale_2  # only when set: one-transformer sets read as before
    return {"steps": params.flow.steps, "shift": params.flow.shift,
            "guidance_scale": params.trajectories.guidance_scale, "shape": list(shape),
            **({"guidance_scale_2": second} if second is not None else {})}


@dataclass
class ValidationSet:
    items: list[tuple[str, int]]
    prompt_embeds: torch.Tensor  # (n, L, D)
    noise: torch.Tensor  # (n, C, T, H, W): the initial latents of every sample
    teacher_latents: torch.Tensor  # (n, C, T, H, W): the teacher's flow.steps-step samples


@torch.no_grad()
def make(params: Params, teacher: Backbone, out_dir: Path, batch_size: int = 8) -> Path:
    """Sample the teacher on the validation set and store it (atomically); returns the folder."""
    from dcm.data.trajectories import latent_shape

    items = validation_items(params)
    shape = latent_shape(params, teacher)
    sigmas = teacher.sigma_grid(params.flow.steps, params.flow.shift)
    empty = teacher.encode_prompts([""])
    text = torch.cat([teacher.encode_prompts([p for p, _ in items[i:i + batch_size]])
                      for i in range(0, len(items), batch_size)])
    noise = initial_noise([s for _, s in items], shape)
    samples = []
    bar = tqdm(total=len(items) * params.flow.steps, desc="validation set (teacher)", unit="step")
    for start in range(0, len(items), batch_size):
        cond = text[start:start + batch_size]
        velocity = teacher.guided_velocity(teacher.transformer, cond, empty.expand(len(cond), -1, -1),
                                           params.trajectories.guidance_scale, params.trajectories.guidance_scale_2)
        x = teacher.initial_latents(noise[start:start + batch_size], float(sigmas[-1]))
        for k in range(params.flow.steps, 0, -1):
            x = flow.euler_step(x, velocity(x, sigmas[k]), sigmas[k], sigmas[k - 1])
            bar.update(len(cond))
        samples.append(x)
    bar.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / TENSORS) as tmp:
        save_file({"prompt_embeds": text.contiguous(), "noise": noise.contiguous(),
                   "teacher_latents": torch.cat(samples).contiguous()}, str(tmp))
    write_json(out_dir / ITEMS, {"spec": _spec(params, shape), "items": [list(i) for i in items]})
    return out_dir


def check_exists(out_dir: Path) -> None:
    """Fail fast, before any model is loaded, when the validation set has not been made."""
    if not ((out_dir / ITEMS).exists() and (out_dir / TENSORS).exists()):
        raise ValidationSetError(f"{out_dir} holds no validation set: run `dvc repro validation` (or "
                                 "`dcm validation`) first, or set distill.validate_every = 0")


def load(params: Params, teacher: Backbone, out_dir: Path) -> ValidationSet:
    """The stored validation set, checked against the params."""
    from dcm.data.trajectories import latent_shape

    check_exists(out_dir)
    items_path, tensors_path = out_dir / ITEMS, out_dir / TENSORS
    meta = json.loads(items_path.read_text())
    expected = {"spec": _spec(params, latent_shape(params, teacher)),
                "items": [list(i) for i in validation_items(params)]}
    if meta != expected:
        raise ValidationSetError(f"{out_dir} was made with other settings (flow, guidance, video size or "
                                 "distill.validate_videos): rerun `dvc repro validation`")
    tensors = load_file(str(tensors_path))
    return ValidationSet([tuple(i) for i in meta["items"]], tensors["prompt_embeds"], tensors["noise"],
                         tensors["teacher_latents"])
