"""The real-backbone adapters (Wan, CogVideoX, HunyuanVideo) on tiny random checkpoints of the real classes."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from tiny_checkpoints import VIDEO_SHAPES, make_tiny_checkpoint

from dcm import flow
from dcm.config import Params
from dcm.experts import ParameterEfficientExpert
from dcm.models import BACKBONES, BackboneError, load_backbone
from dcm.models.base import token_features
from dcm.models.cogvideox import COGVIDEOX_SUBFOLDERS
from dcm.models.hunyuan import HUNYUAN_SUBFOLDERS, pack_conditioning, unpack_conditioning
from dcm.models.wan import WAN_SUBFOLDERS

PROMPTS = ["a red ball moves left", "a blue cube"]
#: case -> (backbone kind, transformer config overrides): the CogVideoX cases cover 2b (sin-cos positions),
#: 5b (rotary) and 1.5 (rotary, temporal patches, ``ofs`` embedding)
CASES = {
    "wan": ("wan", {}),
    "cogvideox-2b": ("cogvideox", {}),
    "cogvideox-5b": ("cogvideox", {"use_rotary_positional_embeddings": True}),
    "cogvideox-1.5": ("cogvideox", {"use_rotary_positional_embeddings": True, "patch_size_t": 2,
                                    "ofs_embed_dim": 16}),
    "hunyuanvideo": ("hunyuanvideo", {}),
}
CASES_BY_KIND = {"wan": "wan", "cogvideox": "cogvideox-2b", "hunyuanvideo": "hunyuanvideo"}
SUBFOLDERS = {"wan": WAN_SUBFOLDERS, "cogvideox": COGVIDEOX_SUBFOLDERS, "hunyuanvideo": HUNYUAN_SUBFOLDERS}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    return {case: make_tiny_checkpoint(kind, tmp_path_factory.mktemp(case), **config)
            for case, (kind, config) in CASES.items()}


@pytest.fixture(scope="module")
def backbones(checkpoints) -> dict:
    return {case: load_backbone(checkpoints[case], kind=CASES[case][0]) for case in CASES}


def inputs(backbone, batch: int = 2, seed: int = 0):
    """Latents of the case's video shape, a sigma on the teacher grid and prompt embeddings."""
    shape = backbone.latent_shape(*VIDEO_SHAPES[backbone.kind])
    latents = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
    return latents, backbone.sigma_grid(4, 3.0)[2], backbone.encode_prompts(PROMPTS[:batch])


# ---- every backbone ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_tiny_checkpoint_loads_through_load_backbone(backbones, case):
    assert isinstance(backbones[case], BACKBONES[CASES[case][0]])


@pytest.mark.parametrize("kind", ["wan", "cogvideox", "hunyuanvideo"])
def test_tiny_checkpoint_is_a_diffusers_pipeline_directory(checkpoints, kind):
    from diffusers import DiffusionPipeline, WanPipeline

    path = checkpoints[CASES_BY_KIND[kind]]
    pipeline = (WanPipeline if kind == "wan" else DiffusionPipeline).from_pretrained(path)
    assert type(pipeline.transformer) is type(load_backbone(path, kind=kind).transformer)


@pytest.mark.parametrize("case", CASES)
def test_latent_shape_matches_the_vae(backbones, case):
    backbone = backbones[case]
    frames, height, width = VIDEO_SHAPES[backbone.kind]
    pixels = torch.rand(1, 3, frames, height, width) * 2 - 1
    latents = backbone.encode_video(pixels)
    assert tuple(latents.shape[1:]) == backbone.latent_shape(frames, height, width)
    assert backbone.decode_latents(latents).shape == pixels.shape


@pytest.mark.parametrize("case", CASES)
def test_velocity_has_the_latent_shape(backbones, case):
    backbone = backbones[case]
    latents, sigma, text = inputs(backbone)
    v = backbone.velocity(backbone.transformer, latents, sigma, text)
    assert v.shape == latents.shape and torch.isfinite(v).all()
    per_sample = backbone.velocity(backbone.transformer, latents, sigma.expand(2), text)
    torch.testing.assert_close(per_sample, v)


@pytest.mark.parametrize("case", CASES)
def test_feature_taps_are_video_tokens_on_the_token_grid(backbones, case):
    backbone = backbones[case]
    latents, sigma, text = inputs(backbone)
    blocks = backbone.feature_blocks()
    assert len(blocks) == sum(len(getattr(backbone.transformer, name)) for name in backbone.block_lists)
    outputs = []
    handles = [block.register_forward_hook(lambda _m, _i, out: outputs.append(token_features(out)))
               for block in blocks]
    try:
        backbone.velocity(backbone.transformer, latents, sigma, text)
    finally:
        for handle in handles:
            handle.remove()
    tokens = math.prod(backbone.token_grid(latents.shape))
    assert [tuple(o.shape) for o in outputs] == [(2, tokens, backbone.feature_dim())] * len(blocks)


@pytest.mark.parametrize("case", CASES)
def test_detail_expert_switches_its_lora_and_timestep_layers(backbones, case):
    backbone = backbones[case]
    latents, sigma, text = inputs(backbone)
    expert = ParameterEfficientExpert(copy.deepcopy(backbone.transformer), backbone.timestep_layers, 2, 4.0,
                                      Params().detail.lora_targets)
    with torch.no_grad():
        for name, p in expert.base.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
        semantic = backbone.velocity(expert.base, latents, sigma, text)
        detail = backbone.velocity(expert, latents, sigma, text)
        reference = backbone.velocity(backbone.transformer, latents, sigma, text)
    torch.testing.assert_close(semantic, reference)
    assert not torch.allclose(detail, semantic, atol=1e-4)


@pytest.mark.parametrize("kind", ["wan", "cogvideox", "hunyuanvideo"])
def test_missing_subfolder_is_a_backbone_error_naming_it(tmp_path, kind):
    *present, missing = SUBFOLDERS[kind]
    for name in present:
        (tmp_path / name).mkdir()
    with pytest.raises(BackboneError, match=re.escape(str(tmp_path / missing))):
        load_backbone(tmp_path, kind=kind)


@pytest.mark.parametrize("case", CASES)
def test_fsdp_units_are_the_transformer_blocks_among_its_own_no_split_modules(backbones, case):
    """One FSDP unit per transformer block, named by diffusers' _no_split_modules; the image-to-video
    blocks HunyuanVideo's class also names are not built by this text-to-video model (accelerate would
    reject them)."""
    backbone = backbones[case]
    blocks = backbone.fsdp_blocks()
    assert set(blocks) == {type(block).__name__ for block in backbone.feature_blocks()}
    assert set(blocks) <= set(type(backbone.transformer)._no_split_modules)
    if backbone.kind == "hunyuanvideo":
        assert blocks == ("HunyuanVideoTransformerBlock", "HunyuanVideoSingleTransformerBlock")


@pytest.mark.parametrize("case", CASES)
def test_the_skeleton_from_the_configs_alone_is_the_loaded_structure(backbones, checkpoints, case):
    """Parameter counts, FSDP units and copied layers of a model read without its weights (dcm estimate,
    dcm.launch) are those of the loaded model."""
    backbone = backbones[case]
    skeleton = BACKBONES[backbone.kind].skeleton(Params().model, checkpoints[case])
    assert next(skeleton.transformer.parameters()).is_meta
    assert sum(p.numel() for p in skeleton.transformer.parameters()) == sum(
        p.numel() for p in backbone.transformer.parameters())
    assert skeleton.fsdp_blocks() == backbone.fsdp_blocks()
    assert skeleton.timestep_layers == backbone.timestep_layers


@pytest.mark.parametrize("case", ["wan", "cogvideox-1.5", "hunyuanvideo"])
def test_save_pretrained_round_trips(backbones, tmp_path, case):
    backbone = backbones[case]
    backbone.save_pretrained(tmp_path)
    again = load_backbone(tmp_path, kind=backbone.kind)
    latents, sigma, text = inputs(backbone)
    torch.testing.assert_close(again.encode_prompts(PROMPTS), text)
    torch.testing.assert_close(again.velocity(again.transformer, latents, sigma, text),
                               backbone.velocity(backbone.transformer, latents, sigma, text))


# ---- CogVideoX: v-prediction on the DDIM grid, in flow coordinates ---------------------------------

COGVIDEOX = ["cogvideox-2b", "cogvideox-1.5"]


def vp_coefficients(scheduler, t: int) -> tuple[float, float]:
    ac = float(scheduler.alphas_cumprod[t])
    return ac ** 0.5, (1 - ac) ** 0.5


def v_prediction(backbone, x_t: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
    """The transformer called exactly as ``CogVideoXPipeline`` calls it, in ``(B, C, T, H, W)``."""
    cfg = backbone.transformer.config
    _, _, frames, h, w = x_t.shape
    return backbone.transformer(
        hidden_states=x_t.permute(0, 2, 1, 3, 4), encoder_hidden_states=text,
        timestep=torch.full((len(x_t),), t), ofs=x_t.new_full((1,), 2.0) if cfg.ofs_embed_dim else None,
        image_rotary_emb=backbone.rotary_embedding(frames, h, w, x_t.device)
        if cfg.use_rotary_positional_embeddings else None, return_dict=False,
    )[0].permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("case", COGVIDEOX)
def test_cogvideox_grid_is_the_schedulers_timesteps_in_flow_sigmas(backbones, case):
    backbone = backbones[case]
    grid = backbone.sigma_grid(10, shift=5.0)
    backbone.scheduler.set_timesteps(10)
    assert len(grid) == 11 and grid[0] == 0 and torch.all(grid[1:] > grid[:-1])
    assert grid[-1] == 1  # zero terminal SNR: the noisiest timestep is pure noise
    assert torch.equal(backbone.timesteps(grid[1:]), backbone.scheduler.timesteps.flip(0).double())
    assert torch.equal(backbone.sigma_grid(10, shift=1.0), grid)


@pytest.mark.parametrize("case", COGVIDEOX)
def test_cogvideox_velocity_is_exact_on_grid_points(backbones, case):
    """Recovering x0 from flow coordinates and the velocity gives the v-prediction's x0."""
    backbone = backbones[case]
    x_flow, _, text = inputs(backbone)
    grid = backbone.sigma_grid(10, 1.0)
    for k, t in zip(range(1, 11), backbone.scheduler.timesteps.flip(0).tolist(), strict=True):
        sigma = grid[k]
        a, b = vp_coefficients(backbone.scheduler, t)
        assert float(sigma) == pytest.approx(b / (a + b), rel=1e-6)
        x_t = x_flow * (a + b)
        with torch.no_grad():
            x0 = x_flow - sigma * backbone.velocity(backbone.transformer, x_flow, sigma, text)
            expected = a * x_t - b * v_prediction(backbone, x_t, t, text)
        torch.testing.assert_close(x0, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", COGVIDEOX)
def test_cogvideox_euler_steps_are_the_stock_ddim_steps(backbones, case):
    """Sampling the whole grid with Euler in flow coordinates reproduces ``CogVideoXDDIMScheduler.step``
    (eta 0) on the same model outputs, from the same noise."""
    from diffusers import CogVideoXDDIMScheduler

    backbone = backbones[case]
    noise, _, text = inputs(backbone)
    grid = backbone.sigma_grid(10, 1.0)
    scheduler = CogVideoXDDIMScheduler.from_config(backbone.scheduler.config)
    scheduler.set_timesteps(10)
    x_ddim, x_flow = noise, backbone.initial_latents(noise, float(grid[-1]))
    with torch.no_grad():
        for k, t in zip(range(10, 0, -1), scheduler.timesteps.tolist(), strict=True):
            x_ddim = scheduler.step(v_prediction(backbone, x_ddim, t, text), t, x_ddim, eta=0.0).prev_sample
            v = backbone.velocity(backbone.transformer, x_flow, grid[k], text)
            x_flow = flow.euler_step(x_flow, v, grid[k], grid[k - 1])
            prev = t - scheduler.config.num_train_timesteps // 10
            a, b = vp_coefficients(scheduler, prev) if prev >= 0 else (1.0, 0.0)
            torch.testing.assert_close(x_flow * (a + b), x_ddim.float(), rtol=1e-4, atol=1e-4)


def test_cogvideox_latent_frames_must_decode_consistently(backbones):
    with pytest.raises(ValueError, match="8k \\+ 1 frames"):
        backbones["cogvideox-2b"].latent_shape(13, 32, 32)
    assert backbones["cogvideox-1.5"].latent_shape(9, 32, 32)[1] == 4  # 3 VAE frames + 1 leading pad


def test_cogvideox_15_copies_its_ofs_embedding(backbones):
    assert "ofs_embedding" in backbones["cogvideox-1.5"].timestep_layers
    assert "ofs_embedding" not in backbones["cogvideox-2b"].timestep_layers


# ---- HunyuanVideo: embedded guidance and packed conditioning ----------------------------------------

def test_hunyuan_guidance_is_one_call_at_the_embedded_scale_whatever_the_cfg_scale(backbones):
    backbone = backbones["hunyuanvideo"]
    latents, sigma, text = inputs(backbone)
    calls = []
    handle = backbone.transformer.register_forward_pre_hook(
        lambda _m, _args, kwargs: calls.append(kwargs["guidance"]), with_kwargs=True)
    try:
        with torch.no_grad():
            guided = backbone.guided_velocity(backbone.transformer, text, torch.zeros_like(text), 4.5)(latents, sigma)
            assert len(calls) == 1
            torch.testing.assert_close(calls[0], torch.full((2,), 1000.0 * backbone.embedded_guidance_scale))
            unguided = backbone.guided_velocity(backbone.transformer, text, None, 4.5)(latents, sigma)
            backbone.velocity(backbone.transformer, latents, sigma, text)
    finally:
        handle.remove()
    torch.testing.assert_close(guided, unguided)  # the unconditional branch is never used
    torch.testing.assert_close(calls[-1], torch.full((2,), 1000.0 * backbone.embedded_guidance_scale))
    assert backbone.guidance == "embedded"


def test_hunyuan_velocity_is_the_pipelines_transformer_call(backbones):
    backbone = backbones["hunyuanvideo"]
    latents, sigma, text = inputs(backbone)
    tokens, mask, pooled = unpack_conditioning(text, backbone.transformer.config.pooled_projection_dim)
    with torch.no_grad():
        expected = backbone.transformer(
            hidden_states=latents, timestep=(sigma * 1000).expand(2), encoder_hidden_states=tokens,
            encoder_attention_mask=mask.float(), pooled_projections=pooled, guidance=torch.full((2,), 6000.0),
            return_dict=False)[0]
        torch.testing.assert_close(backbone.velocity(backbone.transformer, latents, sigma, text), expected)


def test_hunyuan_packing_round_trips_mask_and_pooled_projection():
    tokens = torch.randn(3, 7, 16)
    lengths = torch.tensor([7, 3, 1])
    mask = torch.arange(7)[None] < lengths[:, None]
    tokens = tokens * mask[..., None]
    pooled = torch.randn(3, 8)
    packed = pack_conditioning(tokens, pooled)
    assert packed.shape == (3, 8, 16)
    out_tokens, out_mask, out_pooled = unpack_conditioning(packed, 8)
    assert torch.equal(out_tokens, tokens) and torch.equal(out_mask, mask) and torch.equal(out_pooled, pooled)
    with pytest.raises(ValueError, match="wider"):
        pack_conditioning(tokens, torch.randn(3, 17))


def test_hunyuan_prompt_embeddings_pack_the_cropped_llama_tokens_and_clip_pooling(checkpoints):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    template = DEFAULT_PROMPT_TEMPLATE["template"]
    backbone = load_backbone(checkpoints["hunyuanvideo"], kind="hunyuanvideo", max_sequence_length=32,
                             prompt_template={"template": template})
    text = backbone.encode_prompts(PROMPTS)
    assert text.shape == (2, 33, backbone.text_encoder.config.hidden_size)
    _, mask, pooled = unpack_conditioning(text, backbone.transformer.config.pooled_projection_dim)
    # the prompt's tokens and the template's closing tokens survive the crop
    full = [len(backbone.tokenizer(template.format(p)).input_ids) for p in PROMPTS]
    assert mask.sum(1).tolist() == [n - backbone.crop_start for n in full]
    clip = backbone.tokenizer_2(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")
    torch.testing.assert_close(pooled, backbone.text_encoder_2(clip.input_ids).pooler_output)
