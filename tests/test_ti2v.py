"""Wan2.2-TI2V-5B's layout, text to video: the Wan2.2 VAE (48 latent channels, 16x spatial, patchified
pixels) and ``expand_timesteps`` (a timestep per token, as ``WanPipeline`` passes it), through every
stage, exported to a stock ``WanPipeline`` that keeps ``expand_timesteps``; built as a tiny random
checkpoint with diffusers' own classes."""

import json

import pytest
import torch
from tiny_checkpoints import TI2V_LATENT_CHANNELS, VIDEO_SHAPES, make_tiny_checkpoint, run_stock_wan_pipeline

from conftest import run_dcm_stages, tiny_wan_params
from dcm.export import export_wan_pipeline
from dcm.guidance import initial_noise
from dcm.layout import Layout
from dcm.models import load_backbone
from dcm.sampling import sample
from dcm.students import load_sampler

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red circle moving left"


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    return make_tiny_checkpoint("wan2.2-ti2v", tmp_path_factory.mktemp("ti2v") / "checkpoint")


def test_the_wan22_vae_and_a_timestep_per_token_are_what_the_stock_pipeline_runs(ti2v):
    from diffusers import WanPipeline

    teacher = load_backbone(ti2v, "wan")
    frames, height, width = VIDEO_SHAPES["wan2.2-ti2v"]
    shape = teacher.latent_shape(frames, height, width)
    assert shape == (TI2V_LATENT_CHANNELS, 2, 4, 4) and teacher.expand_timesteps
    pipe = WanPipeline.from_pretrained(ti2v)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["timestep"].shape), with_kwargs=True)
    x, text = torch.randn(1, *shape), teacher.encode_prompts([PROMPT])
    teacher.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(a[1].shape), with_kwargs=True)
    pipe(prompt_embeds=text, height=height, width=width, num_frames=frames, num_inference_steps=1, guidance_scale=1.0,
         latents=x, output_type="latent")
    teacher.velocity(teacher.transformer, x, torch.tensor(1.0), text)
    assert seen[0] == seen[1] == (1, 2 * 2 * 2)  # latent frames x (4 / 2) x (4 / 2) tokens


def test_a_ti2v_teacher_runs_every_stage_and_exports_a_stock_pipeline_that_matches_dcm(ti2v, tmp_path,
                                                                                    prompts_workspace):
    prompts = prompts_workspace
    frames, height, width = VIDEO_SHAPES["wan2.2-ti2v"]
    params = tiny_wan_params(ti2v, "wan2.2-ti2v", prompts, {
        "flow": {"steps": 8}, "boundary": 4, "sample": {"methods": ["teacher", "dcm"], "steps": [4]}})
    latency, metrics = run_dcm_stages(params)
    assert json.loads((Layout().trajectories / "manifest.json").read_text())["spec"]["shape"] == [48, 2, 4, 4]
    assert set(latency) == {"teacher@8", "dcm@4"} and "psnr_vs_teacher" in metrics["dcm@4"]

    out = export_wan_pipeline(params, steps=4)
    assert json.loads((out / "model_index.json").read_text())["expand_timesteps"] is True
    backbone = load_backbone(Layout().teacher_model)
    shape = backbone.latent_shape(frames, height, width)
    stock = run_stock_wan_pipeline(out, initial_noise([3], shape), params.model, PROMPT, 4, tmp_path)
    sampler = load_sampler("dcm", 4, backbone, params.with_overrides({"sample": {"schedule": "stock"}}))
    ours = sample(sampler, backbone, [PROMPT], [3], shape)
    assert (stock["latents"] - ours).abs().max().item() <= 1e-4
    assert stock["ran"] == ["transformer", "transformer", "transformer_2", "transformer_2"]
