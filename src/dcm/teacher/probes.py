"""What the tiny teacher has learned, measured against the toy world's ground truth.

* :func:`accuracy` of sampled videos per prompt attribute (the quality bar);
* :func:`denoising_accuracy`: one-step denoising of noised ground truth, by noise level, which
  shows up to which sigma an attribute can be read out of a video;
* :func:`prompt_swap_probe`: how far the one-step estimate moves when one prompt word is
  swapped, which shows which words the teacher listens to at each noise level.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from dcm import flow
from dcm.config import Params
from dcm.evaluation.samples import score_samples
from dcm.models.tiny import TinyBackbone
from dcm.sampling import sample, teacher_sampler
from dcm.world.grammar import COLORS, DIRECTIONS, SHAPES, TEXTURES, Prompt
from dcm.world.render import render_batch, to_video


def sample_videos(backbone: TinyBackbone, transformer: torch.nn.Module, items: list[tuple[Prompt, int]],
                  params: Params, steps: int, guidance_scale: float, batch_size: int = 16) -> list[np.ndarray]:
    """The teacher's Euler sampler with CFG on a ``steps``-step grid, for the in-training checks."""
    teacher = teacher_sampler(backbone, transformer, steps, params.flow.shift, guidance_scale)
    world = params.world
    latents = sample(teacher, backbone, [p.text for p, _ in items], [s for _, s in items],
                     (3, world.frames, world.size, world.size), batch_size)
    return [to_video(v) for v in backbone.decode_latents(latents)]


ACCURACY_KEYS = ("color", "object_class", "motion_direction", "scene")  # the quality bar's attributes


def accuracy(videos: list[np.ndarray], items: list[tuple[Prompt, int]], params: Params) -> dict[str, float]:
    scores = score_samples(videos, items, params.world.to_config()).aggregate
    return {f"acc_{k}": scores[k] for k in ACCURACY_KEYS}


@torch.no_grad()
def denoising_accuracy(backbone: TinyBackbone, transformer: torch.nn.Module, items: list[tuple[Prompt, int]],
                       params: Params, sigmas: list[float], guidance_scale: float,
                       batch_size: int = 16) -> list[dict[str, float]]:
    """Per-attribute accuracy of one-step denoising at each noise level in ``sigmas``.

    Each held-out video is rendered, noised to ``sigma`` and denoised in one guided step
    (``x0 = x_sigma - sigma * v``). It shows up to which noise level the teacher can still read
    an attribute out of a video; a sampler that starts from pure noise has to decide the
    attributes above that level on its own, so the gap to the sampled accuracy locates the
    failure (a weak high-noise model rather than a weak denoiser, or the other way round)."""
    prompts = [p for p, _ in items]
    x0 = render_batch(prompts, [s for _, s in items], params.world.to_config())
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(params.teacher_eval.seed))
    cond = backbone.encode_prompts([p.text for p in prompts])
    empty = backbone.encode_prompts([""])
    transformer.eval()
    rows = []
    for sigma in sigmas:
        x_sigma = flow.add_noise(x0, noise, torch.tensor(sigma))
        denoised = []
        for i in range(0, len(items), batch_size):
            part = slice(i, i + batch_size)
            uncond = empty.expand(len(cond[part]), -1, -1)
            velocity = backbone.guided_velocity(transformer, cond[part], uncond, guidance_scale)
            sigma_batch = torch.full((x_sigma[part].shape[0],), sigma)
            denoised.append(x_sigma[part] - sigma * velocity(x_sigma[part], sigma_batch))
        videos = [to_video(v) for v in backbone.decode_latents(torch.cat(denoised))]
        rows.append({"sigma": sigma, **accuracy(videos, items, params)})
    return rows


SWAP_ATTRIBUTES = {"color": tuple(COLORS), "shape": SHAPES, "direction": tuple(DIRECTIONS), "texture": TEXTURES}


def swapped(prompt: Prompt, attribute: str) -> Prompt:
    """``prompt`` with one word replaced by the next value of its attribute."""
    values = SWAP_ATTRIBUTES[attribute]
    current = getattr(prompt, attribute)
    return replace(prompt, **{attribute: values[(values.index(current) + 1) % len(values)]})


@torch.no_grad()
def prompt_swap_probe(backbone: TinyBackbone, transformer: torch.nn.Module, items: list[tuple[Prompt, int]],
                      params: Params, sigmas: list[float], batch_size: int = 16) -> list[dict[str, float]]:
    """What the teacher listens to: noise each video to ``sigma``, take the one-step estimate
    ``x0 = x_sigma - sigma * v`` under its prompt and under the prompt with one word swapped,
    and report the mean absolute change per attribute (model space, [-1, 1]). A word the model
    ignores moves the estimate by ~0; :func:`ideal_swap_gap` is what an exact model moves at sigma 1."""
    prompts = [p for p, _ in items]
    x0 = render_batch(prompts, [s for _, s in items], params.world.to_config())
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(params.teacher_eval.seed))
    transformer.eval()

    def estimate(x_sigma: torch.Tensor, texts: list[str], sigma: float) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            part = slice(i, i + batch_size)
            text = backbone.encode_prompts(texts[part])
            sigma_batch = torch.full((text.shape[0],), sigma)
            out.append(x_sigma[part] - sigma * backbone.velocity(transformer, x_sigma[part], sigma_batch, text))
        return torch.cat(out)

    rows = []
    for sigma in sigmas:
        x_sigma = flow.add_noise(x0, noise, torch.tensor(sigma))
        base = estimate(x_sigma, [p.text for p in prompts], sigma)
        row = {"sigma": sigma}
        for attribute in SWAP_ATTRIBUTES:
            other = estimate(x_sigma, [swapped(p, attribute).text for p in prompts], sigma)
            row[attribute] = float((other - base).abs().mean())
        rows.append(row)
    return rows


def ideal_swap_gap(items: list[tuple[Prompt, int]], params: Params, renders: int = 128) -> dict[str, float]:
    """The swap probe's value at sigma 1 for an exact model: there the best estimate is the
    conditional mean ``E[x0 | prompt]``, estimated here from ``renders`` training seeds."""
    world = params.world.to_config()
    seeds = list(range(renders))

    def mean_video(prompt: Prompt) -> torch.Tensor:
        return render_batch([prompt] * renders, seeds, world).mean(0)

    prompts = list(dict.fromkeys(p for p, _ in items))[:8]
    return {attribute: float(np.mean([(mean_video(swapped(p, attribute)) - mean_video(p)).abs().mean().item()
                                      for p in prompts])) for attribute in SWAP_ATTRIBUTES}
