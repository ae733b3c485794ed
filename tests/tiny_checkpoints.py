"""Tiny random checkpoints of the real backbones, in the diffusers layout, built without downloads.

Each is the real transformer, VAE and text-encoder classes at toy widths (a few hundred kB on disk)
with word-level tokenizers, saved through the real pipeline class so ``model_index.json`` matches
what ``DiffusionPipeline.from_pretrained`` expects.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.normalizers import Lowercase
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from dcm.world.grammar import word_list

#: (frames, height, width) of a video each tiny checkpoint accepts: 4x temporal / 8x spatial VAEs give
#: a 2x4x4 latent (3x4x4 for CogVideoX, whose VAE decodes an odd number of latent frames), which the
#: 1x2x2 patches tile
VIDEO_SHAPES: dict[str, tuple[int, int, int]] = {"wan": (5, 32, 32), "wan2.2": (5, 32, 32), "cogvideox": (9, 32, 32),
                                                 "hunyuanvideo": (5, 32, 32), "wan2.2-ti2v": (5, 64, 64),
                                                 "wan2.1-i2v": (5, 32, 32), "wan2.2-i2v": (5, 32, 32)}
#: Wan2.2-T2V-A14B's switch: ``transformer`` at t >= 875, ``transformer_2`` below
WAN22_BOUNDARY_RATIO = 0.875
TEXT_DIM, LATENT_CHANNELS = 16, 4
VAE_CHANNELS = (8, 8, 8, 8)


def word_tokenizer(specials: list[str], template: str, max_length: int, extra_words: str = "",
                   **roles: str) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over the world's words; ``specials`` get the first ids and
    ``template`` (e.g. ``"<s> $A </s>"``) adds them around every text, like the real tokenizers."""
    words = [w for w, _ in Whitespace().pre_tokenize_str(extra_words.lower())]
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*specials, *word_list(), *words]))}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=roles["unk_token"]))
    tok.normalizer = Lowercase()
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(single=template, special_tokens=[(s, vocab[s]) for s in specials
                                                                             if s in template])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **roles)


def t5_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    return word_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", max_length,
                          pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _t5_config(cls, vocab_size: int):
    return cls(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
               dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def _wan(directory: Path, boundary_ratio: float | None = None, vae=None, expand_timesteps: bool = False,
         **transformer_config) -> None:
    """Wan2.1's layout; with ``boundary_ratio``, Wan2.2-A14B's: a second transformer (other random weights)
    in ``transformer_2`` that WanPipeline runs below the boundary; ``vae`` and ``expand_timesteps``:
    TI2V-5B's."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    def transformer() -> WanTransformer3DModel:
        return WanTransformer3DModel(**{
            "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 8,
            "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "text_dim": TEXT_DIM, "freq_dim": 16,
            "ffn_dim": 32, "num_layers": 1, "rope_max_seq_len": 64, **transformer_config})

    tokenizer = t5_tokenizer(512)
    WanPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(_t5_config(UMT5Config, len(tokenizer))),
        vae=vae or AutoencoderKLWan(base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                    latents_mean=[0.1] * LATENT_CHANNELS, latents_std=[2.0] * LATENT_CHANNELS),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer(),
        transformer_2=transformer() if boundary_ratio is not None else None,
        boundary_ratio=boundary_ratio,
        expand_timesteps=expand_timesteps,
    ).save_pretrained(directory)


def _cogvideox(directory: Path, **transformer_config) -> None:
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    text_length = 16
    tokenizer = t5_tokenizer(text_length)
    frames, height, width = VIDEO_SHAPES["cogvideox"]
    CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=T5EncoderModel(_t5_config(T5Config, len(tokenizer))),
        vae=AutoencoderKLCogVideoX(block_out_channels=VAE_CHANNELS, latent_channels=LATENT_CHANNELS,
                                   layers_per_block=1, norm_num_groups=4, sample_height=height, sample_width=width),
        transformer=CogVideoXTransformer3DModel(**{
            "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": LATENT_CHANNELS,
            "out_channels": LATENT_CHANNELS, "time_embed_dim": 16, "text_embed_dim": TEXT_DIM, "num_layers": 1,
            "sample_width": width // 8, "sample_height": height // 8, "sample_frames": frames,
            "max_text_seq_length": text_length, **transformer_config}),
        # CogVideoX-2b's scheduler_config.json
        scheduler=CogVideoXDDIMScheduler(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085,
                                         clip_sample=False, num_train_timesteps=1000, prediction_type="v_prediction",
                                         rescale_betas_zero_snr=True, set_alpha_to_one=True, snr_shift_scale=3.0,
                                         steps_offset=0, timestep_spacing="trailing"),
    ).save_pretrained(directory)


def _hunyuanvideo(directory: Path, **transformer_config) -> None:
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer = word_tokenizer(["<|end_of_text|>", "<|begin_of_text|>", "<unk>"], "<|begin_of_text|> $A", 1024,
                               extra_words=DEFAULT_PROMPT_TEMPLATE["template"], pad_token="<|end_of_text|>",
                               bos_token="<|begin_of_text|>", unk_token="<unk>")
    tokenizer_2 = word_tokenizer(["<|startoftext|>", "<|endoftext|>", "<unk>"], "<|startoftext|> $A <|endoftext|>",
                                 77, pad_token="<|endoftext|>", bos_token="<|startoftext|>",
                                 eos_token="<|endoftext|>", unk_token="<unk>")
    pooled_dim = 8
    HunyuanVideoPipeline(
        text_encoder=LlamaModel(LlamaConfig(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=32,
                                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                            max_position_embeddings=512, pad_token_id=0, bos_token_id=1,
                                            eos_token_id=0)),
        tokenizer=tokenizer,
        transformer=HunyuanVideoTransformer3DModel(**{
            "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "num_attention_heads": 2,
            "attention_head_dim": 16, "num_layers": 1, "num_single_layers": 1, "num_refiner_layers": 1,
            "text_embed_dim": TEXT_DIM, "pooled_projection_dim": pooled_dim, "rope_axes_dim": (4, 6, 6),
            **transformer_config}),
        vae=AutoencoderKLHunyuanVideo(latent_channels=LATENT_CHANNELS, block_out_channels=VAE_CHANNELS,
                                      layers_per_block=1, norm_num_groups=4),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer_2), hidden_size=pooled_dim,
                                                    intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                    max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                                    pad_token_id=1)),
        tokenizer_2=tokenizer_2,
    ).save_pretrained(directory)


def _wan22(directory: Path, **transformer_config) -> None:
    _wan(directory, WAN22_BOUNDARY_RATIO, **transformer_config)


#: Wan2.2's VAE as TI2V-5B ships it: 48 latent channels, 2x2 pixel patches (12 input channels), 16x spatial
TI2V_LATENT_CHANNELS = 48


def _wan22_ti2v(directory: Path, **transformer_config) -> None:
    """Wan2.2-TI2V-5B's layout: the Wan2.2 VAE (residual, patchified, 16x spatial) and ``expand_timesteps``
    (a timestep per token)."""
    from diffusers import AutoencoderKLWan

    c = TI2V_LATENT_CHANNELS
    vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=c, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                           temperal_downsample=[False, True, True], latents_mean=[0.1] * c, latents_std=[2.0] * c)
    _wan(directory, vae=vae, expand_timesteps=True, **{"in_channels": c, "out_channels": c, **transformer_config})


#: Wan2.2-I2V-A14B's switch: ``transformer`` at t >= 900
WAN22_I2V_BOUNDARY_RATIO = 0.9
CLIP_DIM = 8


def _wan_i2v(directory: Path, boundary_ratio: float | None = None, clip: bool = True, **transformer_config) -> None:
    """Wan2.1-I2V's layout (a CLIP image encoder, ``image_dim``) or, with ``boundary_ratio`` and no CLIP,
    Wan2.2-I2V-A14B's: transformers that take the noisy latent, a 4-channel first-frame mask and the image
    latent (3 x 4 input channels here, 16 + 4 + 16 in the released models)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from diffusers import WanTransformer3DModel
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config,
                              UMT5EncoderModel)

    def transformer() -> WanTransformer3DModel:
        return WanTransformer3DModel(**{
            "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 8,
            "in_channels": 3 * LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "text_dim": TEXT_DIM,
            "freq_dim": 16, "ffn_dim": 32, "num_layers": 1, "rope_max_seq_len": 64,
            **({"image_dim": CLIP_DIM, "added_kv_proj_dim": 16} if clip else {}), **transformer_config})

    tokenizer = t5_tokenizer(512)
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=CLIP_DIM, intermediate_size=16, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=32, patch_size=8,
                                               projection_dim=CLIP_DIM)) if clip else None
    WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(_t5_config(UMT5Config, len(tokenizer))),
        vae=AutoencoderKLWan(base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             latents_mean=[0.1] * LATENT_CHANNELS, latents_std=[2.0] * LATENT_CHANNELS),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        if clip else None,
        image_encoder=encoder,
        transformer=transformer(),
        transformer_2=transformer() if boundary_ratio is not None else None,
        boundary_ratio=boundary_ratio,
    ).save_pretrained(directory)


def _wan22_i2v(directory: Path, **transformer_config) -> None:
    _wan_i2v(directory, WAN22_I2V_BOUNDARY_RATIO, clip=False, **transformer_config)


BUILDERS = {"wan": _wan, "wan2.2": _wan22, "wan2.2-ti2v": _wan22_ti2v, "wan2.1-i2v": _wan_i2v,
            "wan2.2-i2v": _wan22_i2v, "cogvideox": _cogvideox, "hunyuanvideo": _hunyuanvideo}


def make_tiny_checkpoint(kind: str, directory: Path, seed: int = 0, **transformer_config) -> Path:
    """Write a tiny random ``kind`` checkpoint to ``directory`` (``wan2.2``: Wan2.2-A14B's two-transformer
    layout, loaded by the ``wan`` backbone); ``transformer_config`` overrides the transformer's (e.g.
    CogVideoX 1.5's ``patch_size_t``)."""
    torch.manual_seed(seed)
    BUILDERS[kind](Path(directory), **transformer_config)
    return Path(directory)


#: run in a separate process: a stock WanPipeline from an exported directory, from given latents,
#: recording which transformer each step calls
STOCK_WAN_SCRIPT = """
import sys
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from PIL import Image

directory, latents, out, frames, height, width, prompt, steps, image = sys.argv[1:]
pipeline = WanImageToVideoPipeline if image else WanPipeline
pipe = pipeline.from_pretrained(directory)
# WanImageToVideoPipeline (diffusers 0.42.1) cleans prompts with ftfy unguarded; its text encoding is
# WanPipeline's, which runs without ftfy installed
embeds = WanPipeline._get_t5_prompt_embeds(pipe, prompt, max_sequence_length=512)  # __call__ default
extra = {"image": Image.open(image), "prompt_embeds": embeds} if image else {"prompt": prompt}
ran = []
for name in ("transformer", "transformer_2"):
    getattr(pipe, name).register_forward_pre_hook(lambda *_, name=name: ran.append(name))
latents = pipe(num_inference_steps=int(steps), guidance_scale=1.0, num_frames=int(frames),
               height=int(height), width=int(width), latents=torch.load(latents), output_type="latent", **extra).frames
assert "dcm" not in sys.modules, "the exported pipeline must load without dcm"
torch.save({"latents": latents, "ran": ran, "sigmas": pipe.scheduler.sigmas.tolist()}, out)
"""


def run_stock_wan_pipeline(directory: Path, noise, model, prompt: str, steps: int, work: Path,
                           image: Path | None = None) -> dict:
    """The exported ``directory`` run by stock diffusers alone in a fresh process (``model``: the params'
    model section for the video size; ``image``: an image-to-video pipeline's first frame): its latents,
    the transformer each step ran, its sigmas."""
    torch.save(noise, work / "noise.pt")
    subprocess.run([sys.executable, "-c", STOCK_WAN_SCRIPT, str(directory), str(work / "noise.pt"),
                    str(work / "stock.pt"), str(model.frames), str(model.height), str(model.width), prompt, str(steps),
                    str(image or "")],
                   check=True, cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return torch.load(work / "stock.pt")
