"""Stage ``sample``: every method on the same held-out prompts and initial noise, and its latency."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time

from dcm.config import Params, sample_plan
from dcm.layout import LATENCY, Layout
from dcm.tracking import stage_run

log = logging.getLogger(__name__)


def time_sampler(sampler, backbone, prompts: list[str], seeds: list[int], shape, params: Params) -> dict:
    """Median seconds per video over at least ``latency_repeats`` batches and ``latency_min_seconds``
    of timing, after one warm-up batch."""
    from dcm.sampling import sample

    s = params.sample
    batch_p, batch_s = prompts[:s.latency_batch], seeds[:s.latency_batch]
    sample(sampler, backbone, batch_p, batch_s, shape, s.latency_batch)  # warm-up
    times = []
    while len(times) < s.latency_repeats or sum(times) < s.latency_min_seconds:
        tick = time.perf_counter()
        sample(sampler, backbone, batch_p, batch_s, shape, s.latency_batch)
        times.append(time.perf_counter() - tick)
    per_video = statistics.median(times) / len(batch_p)
    return {"latency_s": per_video, "per_step_s": per_video / sampler.steps, "steps": sampler.steps,
            "forward_passes": backbone.forward_passes(sampler.steps, sampler.guidance_scale),
            "batch": len(batch_p), "repeats": len(times)}


def run_sample(params: Params, layout: Layout = Layout()) -> dict:
    """Sample every method on the same held-out prompts and initial noise; time each one."""
    from dcm.data.prompts import sample_items
    from dcm.data.trajectories import latent_shape
    from dcm.io import write_json, write_manifest, write_mp4
    from dcm.models import load_backbone
    from dcm.sampling import method_sigmas, sample
    from dcm.students import check_method, load_sampler
    from dcm.tracking import log_metrics
    from dcm.world.render import to_video

    prompts, seeds, names = sample_items(params)
    backbone = load_backbone(layout.teacher_model)
    plan = sample_plan(params)
    # every schedule and every student is checked before any sampling starts ...
    schedules = {(m, k): method_sigmas(m, k, backbone, params) for m, k in plan}
    for method in params.sample.methods:
        check_method(method, params, layout)
    shape = latent_shape(params, backbone)
    latency = {}
    with stage_run("sample", params):
        loaded = None  # ... and one method's models are in memory at a time
        for (method, steps), sigmas in schedules.items():
            if loaded is None or loaded.method != method:
                loaded = None  # release the previous method's models before loading the next
                loaded = load_sampler(method, steps, backbone, params, layout)
            sampler = dataclasses.replace(loaded, steps=steps, sigmas=sigmas)
            key = f"{method}@{steps}"
            target = layout.samples / key
            latents = sample(sampler, backbone, prompts, seeds, shape, params.sample.batch_size)
            records = []
            for latent, prompt, seed, name in zip(latents, prompts, seeds, names, strict=True):
                write_mp4(target / name, to_video(backbone.decode_latents(latent[None])[0]))
                records.append({"file": name, "prompt": prompt, "seed": seed, "method": method, "steps": steps,
                                "guidance_scale": sampler.guidance_scale})
            write_manifest(target, records)  # last: a folder with a manifest is complete
            latency[key] = time_sampler(sampler, backbone, prompts, seeds, shape, params)
            log_metrics({f"{key}/latency_s": latency[key]["latency_s"]})
            log.info("sample: %s %.4f s per video", key, latency[key]["latency_s"])
        write_json(layout.samples / LATENCY, latency)
    return latency
