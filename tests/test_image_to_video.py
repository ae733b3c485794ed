"""Image-to-video conditioning of the Wan adapter (Wan2.1-I2V with its CLIP image encoder; Wan2.2-I2V-A14B's
two experts without one): the condition dcm packs beside the text reaches the transformer exactly as
``WanImageToVideoPipeline`` builds it, so dcm's guided sampler on the stock schedule reproduces the stock
pipeline; built as tiny random checkpoints with diffusers' own classes."""

import pytest
import torch
from tiny_checkpoints import VIDEO_SHAPES, make_tiny_checkpoint, run_stock_wan_pipeline

from conftest import image_prompt_table, random_image, run_dcm_stages, tiny_wan_params

from dcm import flow
from dcm.models import BackboneError, load_backbone
from dcm.sampling import stock_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT, STEPS, GUIDANCE = "a red circle moving left", 3, 3.0


@pytest.mark.parametrize("kind", ["wan2.1-i2v", "wan2.2-i2v", "wan2.2-ti2v"])
def test_dcm_samples_an_image_to_video_teacher_exactly_as_the_stock_pipeline(kind, tmp_path):
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    checkpoint = make_tiny_checkpoint(kind, tmp_path / kind)
    teacher = load_backbone(checkpoint, "wan")
    frames, height, width = VIDEO_SHAPES[kind]
    shape = teacher.latent_shape(frames, height, width)
    image = random_image(height, width)
    text, empty = teacher.encode_prompts([PROMPT]), teacher.encode_prompts([""])
    conditioning = teacher.condition_on_images(text, [image], frames)
    assert conditioning.shape[1] > text.shape[1]
    assert teacher.condition_channels == (0 if kind == "wan2.2-ti2v" else 2 * shape[0])
    noise = torch.randn(1, *shape, generator=torch.Generator().manual_seed(3))

    pipe = WanImageToVideoPipeline.from_pretrained(checkpoint)
    stock = pipe(image=Image.fromarray(image), prompt_embeds=text, negative_prompt_embeds=empty, height=height,
                 width=width, num_frames=frames, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                 latents=noise.clone(), output_type="latent").frames

    velocity = teacher.guided_velocity(teacher.transformer, conditioning, empty, GUIDANCE)
    sigmas = stock_sigmas(STEPS, pipe.scheduler.config.shift)
    x = noise
    for a, b in zip(sigmas[:-1], sigmas[1:], strict=True):  # ends at 0
        x = flow.euler_step(x, velocity(x, torch.tensor(a)), torch.tensor(a), torch.tensor(b))
    print(f"{kind}: dcm vs WanImageToVideoPipeline, max |diff| = {(stock - x).abs().max():.3g}")
    torch.testing.assert_close(x, stock, rtol=1e-4, atol=1e-4)

    # the image matters: another image, another video
    other = teacher.condition_on_images(text, [random_image(height, width, seed=1)], frames)
    moved = teacher.guided_velocity(teacher.transformer, other, empty, GUIDANCE)(noise, torch.tensor(0.5))
    assert (moved - velocity(noise, torch.tensor(0.5))).abs().max() > 1e-4


def test_a_text_to_video_checkpoint_takes_no_image_condition(tmp_path):
    teacher = load_backbone(make_tiny_checkpoint("wan", tmp_path / "wan"), "wan")
    frames, height, width = VIDEO_SHAPES["wan"]
    with pytest.raises(BackboneError, match="takes no image condition"):
        teacher.condition_on_images(teacher.encode_prompts([PROMPT]), [random_image(height, width)], frames)


def test_a_model_index_naming_a_missing_image_encoder_is_one_line_before_loading(tmp_path, monkeypatch):
    import shutil

    from dcm.models.wan import WanBackbone

    checkpoint = make_tiny_checkpoint("wan2.1-i2v", tmp_path / "i2v")
    shutil.rmtree(checkpoint / "image_encoder")
    loaded = []
    monkeypatch.setattr("diffusers.WanTransformer3DModel.from_pretrained", lambda *a, **k: loaded.append(a))
    with pytest.raises(BackboneError, match=r"WanImageToVideoPipeline .*missing .*image_encoder") as err:
        WanBackbone.from_pretrained(checkpoint)
    assert "\n" not in str(err.value) and not loaded


@pytest.mark.parametrize("kind", ["wan2.2-i2v", "wan2.1-i2v", "wan2.2-ti2v"])
def test_an_image_to_video_teacher_is_distilled_sampled_and_exported_from_a_prompt_set_with_images(
        kind, tmp_path, prompts_workspace):
    """Wan2.2-I2V-A14B's, Wan2.1-I2V's and TI2V-5B's layouts through the stages: trajectories and validation
    conditioned on each prompt's image, both experts, dcm@4 and the teacher, teacher fidelity, and a stock
    WanImageToVideoPipeline export that reproduces dcm's sampler on the stock schedule."""
    from dcm.data.prompts import load_prompt_images
    from dcm.export import export_wan_pipeline
    from dcm.guidance import initial_noise
    from dcm.layout import Layout
    from dcm.sampling import sample
    from dcm.students import load_sampler

    checkpoint = make_tiny_checkpoint(kind, tmp_path / "i2v")
    frames, height, width = VIDEO_SHAPES[kind]
    prompts = image_prompt_table(tmp_path, (width, height))
    params = tiny_wan_params(checkpoint, kind, prompts, {
        "flow": {"steps": 8}, "boundary": 2,  # shift 17: Wan2.2-I2V's switch (t 900) between grid points 2 and 3
        "sample": {"methods": ["teacher", "dcm"], "steps": [4]}})
    latency, metrics = run_dcm_stages(params)
    assert set(latency) == {"teacher@8", "dcm@4"} and "psnr_vs_teacher" in metrics["dcm@4"]

    out = export_wan_pipeline(params, steps=4)
    backbone = load_backbone(Layout().teacher_model)

    backbone.use_images(load_prompt_images(params, "sample.prompt_file", str(prompts), Layout().teacher_model), frames)
    shape = backbone.latent_shape(frames, height, width)
    stock = run_stock_wan_pipeline(out, initial_noise([3], shape), params.model, PROMPT, 4, tmp_path,
                                   image=tmp_path / "red.png")
    sampler = load_sampler("dcm", 4, backbone, params.with_overrides({"sample": {"schedule": "stock"}}))
    ours = sample(sampler, backbone, [PROMPT], [3], shape)
    print(f"I2V export vs dcm on the stock schedule: max |diff| = {(stock['latents'] - ours).abs().max():.3g}")
    assert (stock["latents"] - ours).abs().max().item() <= 1e-4
    assert stock["ran"][0] == "transformer" and stock["ran"][-1] == "transformer_2"
    assert (out / "image_encoder").exists() == (kind == "wan2.1-i2v")
    if kind == "wan2.2-ti2v":  # the first latent frame is the image's latent, as the stock pipeline writes it
        first = backbone.encode_video(torch.from_numpy(random_image(height, width)).permute(2, 0, 1)[None, :, None] / 127.5 - 1)
        torch.testing.assert_close(ours[:, :, :1], first, rtol=1e-5, atol=1e-5)


def test_image_to_video_bad_input_is_one_line_before_the_teacher_loads(tmp_path, prompts_workspace, monkeypatch):
    from dcm.data.prompts import PromptError
    from dcm.stages.teacher import run_teacher
    from dcm.stages.trajectories import run_trajectories

    i2v = make_tiny_checkpoint("wan2.2-i2v", tmp_path / "i2v")
    t2v = make_tiny_checkpoint("wan", tmp_path / "t2v")
    frames, height, width = VIDEO_SHAPES["wan2.2-i2v"]
    table = image_prompt_table(tmp_path, (width, height))
    loaded = []
    monkeypatch.setattr("dcm.models.WanBackbone.from_pretrained", lambda *a, **k: loaded.append(a))
    cases = [
        (i2v, prompts_workspace, r"gives no images, and the teacher in .* is image-to-video"),
        (t2v, table, r"gives images, and the teacher in .* is text-to-video"),
    ]
    for checkpoint, prompt_file, message in cases:
        params = tiny_wan_params(checkpoint, "wan2.2-i2v", prompt_file, {})
        run_teacher(params)
        with pytest.raises(PromptError, match=message) as err:
            run_trajectories(params)
        assert "\n" not in str(err.value)
    params = tiny_wan_params(i2v, "wan2.2-i2v", table, {})
    run_teacher(params)
    image_prompt_table(tmp_path, (width + 8, height))  # the images at another size
    with pytest.raises(PromptError, match=r"red.png is 40x32; the video is 32x32 .*resize it"):
        run_trajectories(params)
    (tmp_path / "red.png").unlink()
    with pytest.raises(PromptError, match=r"row 1: image .*red.png does not exist"):
        run_trajectories(params)
    assert not loaded and not (tmp_path / "artifacts/trajectories").exists()
