"""Teacher ODE trajectories: generated once, stored in shards, read by every distillation stage.

A trajectory is the teacher's CFG-guided Euler solution on the shifted ``flow.steps``-step grid,
kept at every ``store_every``-th grid point and the noise end: ``latents[n, j]`` is video ``n``
at grid index ``stored[j]`` (index 0 clean ... N noise). Shards are ``safetensors`` files written atomically, each with a sidecar JSON holding
its content hash; a finished shard is skipped when the stage reruns, so a killed run loses at
most the shard in progress. Under ``accelerate launch`` each process writes its own shards.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dcm import flow
from dcm.config import Params
from dcm.errors import DcmError
from dcm.layout import MANIFEST
from dcm.io import atomic_path, read_shard, sha256_file, write_json
from dcm.models.base import Backbone
from dcm.data.prompts import read_prompts
from dcm.guidance import initial_noise
from dcm.data.splits import distill_seeds
from dcm.world.grammar import all_prompts

log = logging.getLogger(__name__)



class TrajectoryError(DcmError, RuntimeError):
    """A shard that is missing, truncated, corrupted or made with other settings."""


@dataclass(frozen=True)
class TrajectorySpec:
    """What must match between the shards and the run that reads them."""

    steps: int
    shift: float
    guidance_scale: float
    shape: tuple[int, ...]  # one latent video: (C, T, H, W)
    dtype: str
    stored: tuple[int, ...]  # grid indices kept, ascending
    guidance_scale_2: float | None = None  # a two-expert teacher's scale below its switch

    @classmethod
    def from_params(cls, params: Params, shape: tuple[int, ...]) -> TrajectorySpec:
        t = params.trajectories
        n = params.flow.steps
        stored = tuple(sorted(set(range(0, n + 1, t.store_every)) | {n}))
        return cls(n, params.flow.shift, t.guidance_scale, tuple(shape), t.dtype, stored, t.guidance_scale_2)


def prompt_set(params: Params) -> list[tuple[str, int]]:
    """(prompt, seed) pairs: the toy grammar in a shuffled cycle, or ``trajectories.prompt_file`` in a cycle."""
    t = params.trajectories
    if t.prompt_file:
        prompts = read_prompts(t.prompt_file, params.model.toy_world)
    else:
        toy = all_prompts()
        order = np.random.default_rng(t.seed).permutation(len(toy))
        prompts = [toy[i].text for i in order]
    return [(prompts[i % len(prompts)], seed) for i, seed in enumerate(distill_seeds(t.videos, t.seed))]


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


@torch.no_grad()
def teacher_trajectory(backbone: Backbone, text: torch.Tensor, empty: torch.Tensor, noise: torch.Tensor,
                       sigmas: torch.Tensor, guidance_scale: float,
                       guidance_scale_2: float | None = None) -> torch.Tensor:
    """Every grid point of the guided Euler solve, ``(B, N + 1, C, T, H, W)`` indexed by grid index."""
    velocity = backbone.guided_velocity(backbone.transformer, text, empty, guidance_scale, guidance_scale_2)
    steps = len(sigmas) - 1
    points = [None] * (steps + 1)
    x = backbone.initial_latents(noise, float(sigmas[-1]))
    points[steps] = x
    for k in range(steps, 0, -1):
        x = flow.euler_step(x, velocity(x, sigmas[k]), sigmas[k], sigmas[k - 1])
        points[k - 1] = x
    return torch.stack(points, dim=1)


def _shard_is_done(directory: Path, index: int, spec: TrajectorySpec, items: list[tuple[str, int]],
                   teacher: str | None) -> bool:
    shard, sidecar = directory / _shard_name(index), directory / f"{_shard_name(index)}.json"
    if not (shard.exists() and sidecar.exists()):
        return False
    meta = json.loads(sidecar.read_text())
    return meta.get("spec") == _jsonable(spec) and meta.get("items") == [list(i) for i in items] \
        and meta.get("teacher") == teacher and meta.get("bytes") == shard.stat().st_size


def _jsonable(spec: TrajectorySpec) -> dict:
    """The spec as stored in the manifest; ``guidance_scale_2`` only when set, so the manifests of
    one-transformer teachers read as before it existed."""
    values = asdict(spec)
    if values["guidance_scale_2"] is None:
        del values["guidance_scale_2"]
    return json.loads(json.dumps(values))


def latent_shape(params: Params, backbone: Backbone) -> tuple[int, ...]:
    """``(C, T, H, W)`` of one video's latents for the configured video size."""
    return tuple(backbone.latent_shape(*params.model.video_shape(params.world)))


def generate(params: Params, backbone: Backbone, out_dir: Path, accelerator: Accelerator | None = None, *,
             teacher: str | None = None) -> Path:
    """Generate (or finish) the trajectory shards and write the manifest. Returns its path.

    ``teacher`` identifies the teacher (``dcm.io.tree_fingerprint`` of its folder): a shard another
    teacher made is made again, not kept."""
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    t = params.trajectories
    shape = latent_shape(params, backbone)
    spec = TrajectorySpec.from_params(params, shape)
    dtype = getattr(torch, t.dtype)
    items = prompt_set(params)
    shards = [items[i:i + t.shard_size] for i in range(0, len(items), t.shard_size)]
    sigmas = backbone.sigma_grid(params.flow.steps, params.flow.shift)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone.transformer.to(accelerator.device).eval()
    empty = backbone.encode_prompts([""]).to(accelerator.device)
    mine = [i for i in range(len(shards)) if i % accelerator.num_processes == accelerator.process_index]
    todo = [i for i in mine if not _shard_is_done(out_dir, i, spec, shards[i], teacher)]
    log.info("trajectories: process %d of %d writes shards %s", accelerator.process_index,
             accelerator.num_processes, mine)
    if len(todo) < len(mine):
        log.info("trajectories: %d of %d shards of this process already done, skipping them", len(mine) - len(todo), len(mine))
    bar = tqdm(total=sum(len(shards[i]) for i in todo), desc=f"trajectories[{accelerator.process_index}]",
               unit="video", disable=not accelerator.is_local_main_process)
    for index in todo:
        chunk = shards[index]
        latents, embeds = [], []
        for start in range(0, len(chunk), t.batch_size):
            batch = chunk[start:start + t.batch_size]
            text = backbone.encode_prompts([p for p, _ in batch]).to(accelerator.device)
            noise = initial_noise([s for _, s in batch], shape).to(accelerator.device)
            traj = teacher_trajectory(backbone, text, empty.expand(len(batch), -1, -1), noise, sigmas, t.guidance_scale,
                                      t.guidance_scale_2)
            latents.append(traj[:, list(spec.stored)].to("cpu", dtype))
            embeds.append(text.to("cpu", dtype))
            bar.update(len(batch))
        shard = out_dir / _shard_name(index)
        with atomic_path(shard) as tmp:
            save_file({"latents": torch.cat(latents).contiguous(), "prompt_embeds": torch.cat(embeds).contiguous()},
                      str(tmp))
        write_json(f"{shard}.json", {"spec": _jsonable(spec), "items": [list(i) for i in chunk], "teacher": teacher,
                                     "sha256": sha256_file(shard), "bytes": shard.stat().st_size})
    bar.close()
    accelerator.wait_for_everyone()
    manifest = out_dir / MANIFEST
    if accelerator.is_main_process:
        entries = []
        for index, chunk in enumerate(shards):
            sidecar = json.loads((out_dir / f"{_shard_name(index)}.json").read_text())
            entries.append({"file": _shard_name(index), "count": len(chunk), "sha256": sidecar["sha256"],
                            "bytes": sidecar["bytes"], "prompts": [p for p, _ in chunk], "seeds": [s for _, s in chunk]})
        write_json(manifest, {"spec": _jsonable(spec), "grid_sigmas": [round(float(s), 8) for s in sigmas],
                              "videos": len(items), "teacher": teacher, "shards": entries})
    accelerator.wait_for_everyone()
    return manifest


@dataclass
class Trajectories:
    """All stored trajectories in memory: ``latents (n, len(stored), C, T, H, W)``, ``prompt_embeds (n, L, D)``."""

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    prompts: list[str]
    sigmas: torch.Tensor  # the whole grid, by grid index
    spec: TrajectorySpec
    manifest_sha256: str

    @property
    def stored_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.spec.steps + 1, dtype=torch.bool)
        mask[list(self.spec.stored)] = True
        return mask

    def at(self, videos: torch.Tensor, grid_index: torch.Tensor) -> torch.Tensor:
        """Latents of ``videos`` at (stored) grid indices, as float32."""
        position = torch.full((self.spec.steps + 1,), -1, dtype=torch.long)
        position[list(self.spec.stored)] = torch.arange(len(self.spec.stored))
        pos = position[grid_index]
        if (pos < 0).any():
            raise KeyError(f"grid indices {grid_index[pos < 0].tolist()} are not stored")
        return self.latents[videos, pos].float()


def check_manifest(directory: Path, params: Params) -> None:
    """Fail fast, before any loading, when the trajectories are missing or were made with other
    settings (everything but the latent shape, which needs the backbone to know)."""
    manifest_path = Path(directory) / MANIFEST
    if not manifest_path.exists():
        raise TrajectoryError(f"{manifest_path} is missing: run `dvc repro trajectories` (or `dcm trajectories`) first")
    spec = json.loads(manifest_path.read_text())["spec"]
    expected = _jsonable(TrajectorySpec.from_params(params, tuple(spec["shape"])))
    if spec != expected:
        changed = ", ".join(f"{k} {spec.get(k)} there, {expected.get(k)} now" for k in {**spec, **expected}
                            if spec.get(k) != expected.get(k))
        raise TrajectoryError(f"{manifest_path} was made with other settings ({changed}); rerun the trajectories "
                              "stage (`dvc repro trajectories`)")


def load(directory: Path, expected: TrajectorySpec, verify_hash: bool = True) -> Trajectories:
    """Load and check every shard; anything that does not match is a :class:`TrajectoryError`."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise TrajectoryError(f"{manifest_path} is missing: run `dvc repro trajectories` (or `dcm trajectories`) first")
    manifest = json.loads(manifest_path.read_text())
    if manifest["spec"] != _jsonable(expected):
        raise TrajectoryError(
            f"{manifest_path} was made with {manifest['spec']} but this run expects {_jsonable(expected)}; "
            "rerun the trajectories stage"
        )
    latents, embeds, prompts = [], [], []
    dtype = getattr(torch, expected.dtype)
    for entry in manifest["shards"]:
        path = directory / entry["file"]
        tensors = read_shard(path, entry, manifest_path, verify_hash, TrajectoryError)
        lat = tensors.get("latents")
        want = (entry["count"], len(expected.stored), *expected.shape)
        if lat is None or tuple(lat.shape) != want or lat.dtype != dtype:
            got = None if lat is None else (tuple(lat.shape), str(lat.dtype))
            raise TrajectoryError(f"shard {path} holds latents {got}, expected {want} of {dtype}")
        latents.append(lat)
        embeds.append(tensors["prompt_embeds"])
        prompts.extend(entry["prompts"])
    sigmas = torch.tensor(manifest["grid_sigmas"], dtype=torch.float32)
    return Trajectories(torch.cat(latents), torch.cat(embeds), prompts, sigmas, expected, sha256_file(manifest_path))
