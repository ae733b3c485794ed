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


def time_interleaved(samplers: dict, backbone, prompts: list[str], seeds: list[int], shape, params: Params) -> dict:
    """Seconds per video of every sampler, timed in ``latency_repeats`` interleaved rounds after one
    warm-up each: a round times every sampler once, in a shuffled order, on the same batch, so slow
    drift of the machine lands on all of them alike and per-round ratios compare like with like."""
    import random

    from dcm.sampling import sample

    s = params.sample
    batch_p, batch_s = prompts[:s.latency_batch], seeds[:s.latency_batch]

    def per_video(sampler) -> float:
        tick = time.perf_counter()
        sample(sampler, backbone, batch_p, batch_s, shape, s.latency_batch)
        return (time.perf_counter() - tick) / len(batch_p)

    for sampler in samplers.values():
        per_video(sampler)  # warm-up
    rounds: dict[str, list[float]] = {key: [] for key in samplers}
    order = random.Random(params.sample.seed)
    for _ in range(s.latency_repeats):
        keys = list(samplers)
        order.shuffle(keys)
        for key in keys:
            rounds[key].append(per_video(samplers[key]))
    group = ",".join(samplers)
    return {key: {"latency_s": statistics.median(times), "per_step_s": statistics.median(times) / samplers[key].steps,
                  "steps": samplers[key].steps,
                  "forward_passes": backbone.forward_passes(samplers[key].steps, samplers[key].guidance_scale),
                  "batch": len(batch_p), "rounds": times, "timed_with": group}
            for key, times in rounds.items()}


def timing_groups(params: Params) -> list[tuple[str, ...]]:
    """Methods timed together: every method on the toy world (all fit in memory at once); one method at a
    time on a real backbone, where several 14B students would not."""
    methods = tuple(params.sample.methods)
    return [methods] if params.model.toy_world else [(m,) for m in methods]


def run_sample(params: Params, layout: Layout = Layout()) -> dict:
    """Sample every method on the same held-out prompts and initial noise; time each one."""
    from dcm.data.prompts import load_teacher_for_prompts, sample_items
    from dcm.data.trajectories import latent_shape
    from dcm.io import write_json, write_manifest, write_mp4
    from dcm.models import check_guidance_scale_2
    from dcm.sampling import method_sigmas, sample
    from dcm.students import check_method, load_sampler
    from dcm.tracking import log_metrics
    from dcm.world.render import to_video

    prompts, seeds, names = sample_items(params)
    check_guidance_scale_2(layout.teacher_model, "trajectories.guidance_scale_2", params.trajectories.guidance_scale_2)
    backbone = load_teacher_for_prompts(params, "sample.prompt_file", layout.teacher_model)
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
            latents = sample(sampler, backbone, prompts, seeds, shape, params.sample.batch_size, progress=True)
            records = []
            for latent, prompt, seed, name in zip(latents, prompts, seeds, names, strict=True):
                write_mp4(target / name, to_video(backbone.decode_latents(latent[None])[0]))
                records.append({"file": name, "prompt": prompt, "seed": seed, "method": method, "steps": steps,
                                "guidance_scale": sampler.guidance_scale,
                                **({"guidance_scale_2": sampler.guidance_scale_2}
                                   if sampler.guidance_scale_2 is not None else {})})
            write_manifest(target, records)  # last: a folder with a manifest is complete
        loaded = None
        for group in timing_groups(params):
            samplers = {}
            for method in group:
                method_sampler = load_sampler(method, plan_steps(plan, method)[0], backbone, params, layout)
                samplers |= {f"{method}@{k}": dataclasses.replace(method_sampler, steps=k, sigmas=schedules[method, k])
                             for k in plan_steps(plan, method)}
            latency |= time_interleaved(samplers, backbone, prompts, seeds, shape, params)
        for key, entry in latency.items():
            log_metrics({f"{key}/latency_s": entry["latency_s"]})
            log.info("sample: %s %.4f s per video (median of %d interleaved rounds)", key, entry["latency_s"],
                     len(entry["rounds"]))
        write_json(layout.samples / LATENCY, latency)
    return latency


def plan_steps(plan: list[tuple[str, int]], method: str) -> list[int]:
    return [k for m, k in plan if m == method]
