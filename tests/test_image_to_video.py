"""Image-to-video conditioning of the Wan adapter (Wan2.1-I2V with its CLIP image encoder; Wan2.2-I2V-A14B's
two experts without one): the condition dcm packs beside the text reaches the transformer exactly as
``WanImageToVideoPipeline`` builds it, so dcm's guided sampler on the stock schedule reproduces the stock
pipeline; built as tiny random checkpoints with diffusers' own classes."""

import numpy as np
import pytest
import torch
from tiny_checkpoints import VIDEO_SHAPES, make_tiny_checkpoint

from dcm import flow
from dcm.models import BackboneError, load_backbone
from dcm.sampling import stock_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT, STEPS, GUIDANCE = "a red circle moving left", 3, 3.0


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["wan2.1-i2v", "wan2.2-i2v"])
def test_dcm_samples_an_image_to_video_teacher_exactly_as_the_stock_pipeline(kind, tmp_path):
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    checkpoint = make_tiny_checkpoint(kind, tmp_path / kind)
    teacher = load_backbone(checkpoint, "wan")
    frames, height, width = VIDEO_SHAPES[kind]
    shape = teacher.latent_shape(frames, height, width)
    image = _image(height, width)
    text, empty = teacher.encode_prompts([PROMPT]), teacher.encode_prompts([""])
    conditioning = teacher.condition_on_images(text, [image], frames)
    assert conditioning.shape[1] > text.shape[1] and teacher.condition_channels == 2 * shape[0]
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
    other = teacher.condition_on_images(text, [_image(height, width, seed=1)], frames)
    moved = teacher.guided_velocity(teacher.transformer, other, empty, GUIDANCE)(noise, torch.tensor(0.5))
    assert (moved - velocity(noise, torch.tensor(0.5))).abs().max() > 1e-4


def test_a_text_to_video_checkpoint_takes_no_image_condition(tmp_path):
    teacher = load_backbone(make_tiny_checkpoint("wan", tmp_path / "wan"), "wan")
    frames, height, width = VIDEO_SHAPES["wan"]
    with pytest.raises(BackboneError, match="takes no image condition"):
        teacher.condition_on_images(teacher.encode_prompts([PROMPT]), [_image(height, width)], frames)


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
