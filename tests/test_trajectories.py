"""Teacher trajectories: content, resume, integrity checks, online steps for points not stored."""

import json
import os
from pathlib import Path

import pytest
import torch

from dcm import flow
from dcm.data.trajectories import TrajectoryError, TrajectorySpec, load
from dcm.guidance import initial_noise
from dcm.models import load_backbone
from dcm.stages.trajectories import run_trajectories
from dcm.sampling import sample, teacher_sampler

from conftest import with_overrides

TEACHER = Path("artifacts/teacher/model")
OUT = Path("artifacts/trajectories")


def _spec(params):
    w = params.world
    return TrajectorySpec.from_params(params, (3, w.frames, w.size, w.size))


def test_trajectories_are_the_guided_teacher_ode(workspace, micro_distill):
    run_trajectories(micro_distill)
    data = load(OUT, _spec(micro_distill))
    manifest = json.loads((OUT / "manifest.json").read_text())
    assert data.latents.shape == (4, micro_distill.flow.steps + 1, 3, 8, 32, 32)
    assert data.latents.dtype == torch.float16
    assert manifest["videos"] == 4 and len(manifest["shards"]) == 2
    first = manifest["shards"][0]
    # the noise end is the seed's initial noise; the clean end is what the CFG sampler produces
    backbone = load_backbone(TEACHER)
    noise = initial_noise(first["seeds"], (3, 8, 32, 32))
    torch.testing.assert_close(data.latents[:2, -1].float(), noise, atol=2e-3, rtol=2e-3)
    teacher = teacher_sampler(backbone, backbone.transformer, micro_distill.flow.steps, micro_distill.flow.shift,
                              micro_distill.trajectories.guidance_scale)
    clean = sample(teacher, backbone, first["prompts"], first["seeds"], (3, 8, 32, 32))
    torch.testing.assert_close(data.latents[:2, 0].float(), clean, atol=5e-3, rtol=5e-3)


def test_each_stored_step_is_one_guided_euler_step_of_the_teacher(workspace, micro_distill):
    """x_{k-1} = x_k + (sigma_{k-1} - sigma_k) * (v_u + w * (v_c - v_u)), written out here and not
    through dcm.flow or dcm.guidance, so a wrong sign or guidance formula there fails (with CFG: the
    production teacher's scale 1 would leave the unconditional branch out)."""
    params = with_overrides(micro_distill, {"trajectories": {"guidance_scale": 3.0}})
    run_trajectories(params)
    data = load(OUT, _spec(params))
    backbone = load_backbone(TEACHER)
    text = backbone.encode_prompts(data.prompts[:2])
    empty = backbone.encode_prompts([""]).expand(2, -1, -1)
    w = params.trajectories.guidance_scale
    for k in range(params.flow.steps, 0, -1):
        x = data.latents[:2, k].float()
        sigma = torch.full((2,), float(data.sigmas[k]))
        with torch.no_grad():
            v_cond = backbone.velocity(backbone.transformer, x, sigma, text)
            v_uncond = backbone.velocity(backbone.transformer, x, sigma, empty)
        expected = x + float(data.sigmas[k - 1] - data.sigmas[k]) * (v_uncond + w * (v_cond - v_uncond))
        step = (expected - x).abs().mean().item()
        error = (data.latents[:2, k - 1].float() - expected).abs().mean().item()  # float16 storage only
        assert step > 0.005 and error < 0.1 * step, (k, step, error)  # a step that moves, and the right one


def test_finished_shards_are_skipped_on_rerun(workspace, micro_distill):
    run_trajectories(micro_distill)
    shard = OUT / "shard-00001.safetensors"
    stamp = shard.stat().st_mtime_ns
    os.remove(OUT / "shard-00000.safetensors")  # as if killed while writing the first
    run_trajectories(micro_distill)
    assert shard.stat().st_mtime_ns == stamp
    assert (OUT / "shard-00000.safetensors").exists()
    load(OUT, _spec(micro_distill))


def test_shards_another_teacher_made_are_made_again(workspace, micro_distill):
    """A retrained teacher in the same folder: the stage must not keep the old teacher's shards."""
    from safetensors.torch import load_file, save_file

    run_trajectories(micro_distill)
    before = load(OUT, _spec(micro_distill)).latents
    weights = next((TEACHER / "transformer").glob("*.safetensors"))
    tensors = load_file(str(weights))
    save_file({name: value * 1.5 if name.startswith("proj_out") else value for name, value in tensors.items()},
              str(weights), metadata={"format": "pt"})
    run_trajectories(micro_distill)
    after = load(OUT, _spec(micro_distill)).latents
    torch.testing.assert_close(after[:, -1], before[:, -1])  # the same noise
    assert (after[:, 0].float() - before[:, 0].float()).abs().mean() > 1e-3  # another teacher's samples


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1])), "sha256"),
    (lambda p: p.unlink(), "missing"),
])
def test_damaged_shards_are_clear_errors_naming_the_file(workspace, micro_distill, damage, message):
    run_trajectories(micro_distill)
    damage(OUT / "shard-00001.safetensors")
    with pytest.raises(TrajectoryError, match=message) as err:
        load(OUT, _spec(micro_distill))
    assert "shard-00001.safetensors" in str(err.value)


def test_trajectories_made_with_other_settings_are_refused(workspace, micro_distill):
    run_trajectories(micro_distill)
    other = with_overrides(micro_distill, {"flow": {"shift": 5.0}})
    with pytest.raises(TrajectoryError, match="rerun the trajectories stage"):
        load(OUT, _spec(other))


def test_points_not_stored_come_from_an_online_teacher_step(workspace, micro_distill):
    from dcm.distill.batches import Batch, TrajectorySource, previous_point

    run_trajectories(micro_distill)
    full = load(OUT, _spec(micro_distill))
    sparse_params = with_overrides(micro_distill, {"trajectories": {"store_every": 2}})
    run_trajectories(sparse_params)
    sparse = load(OUT, _spec(sparse_params))
    assert sparse.latents.shape[1] == micro_distill.flow.steps // 2 + 1
    backbone = load_backbone(TEACHER)
    points = torch.tensor([2, 4])  # stored; their predecessors 1 and 3 are not
    empty = backbone.encode_prompts([""])
    source = TrajectorySource(sparse)
    batch = Batch(source, points, torch.zeros(2, dtype=torch.long), 4, torch.Generator().manual_seed(0), empty)
    online = previous_point(source, batch, backbone, empty)
    stored = full.at(batch.videos, batch.i - 1)
    torch.testing.assert_close(online, stored, atol=5e-3, rtol=5e-3)
