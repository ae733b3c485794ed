"""The tiny teacher: diffusers' ``WanTransformer3DModel`` with a tiny config, a frozen
random ``UMT5EncoderModel`` and a word-level tokenizer built from ``transformers`` classes.

It works in pixel space; the VAE slot is the identity, so ``encode``/``decode`` only map
pixels in [-1, 1] to latents and back. A saved backbone is a directory in diffusers' layout
(``transformer/``, ``text_encoder/``, ``tokenizer/``) plus ``backbone.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dcm.models.base import Backbone, check_model_dir
from dcm.models.wan import WAN_TIMESTEP_LAYERS, wan_velocity
from dcm.world.grammar import word_list

if TYPE_CHECKING:  # diffusers and transformers are imported where used: validating params asks dcm.models
    from diffusers import WanTransformer3DModel
    from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

    from dcm.config import ModelParams, TinyModelParams

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SUBFOLDERS = ("transformer", "text_encoder", "tokenizer")


@dataclass
class TinyBackbone(Backbone):
    """A tiny text-to-video flow-matching model and its text stack."""

    transformer: WanTransformer3DModel
    text_encoder: UMT5EncoderModel
    tokenizer: PreTrainedTokenizerFast
    max_length: int
    coordinate_channels: bool = False
    prediction: str = "velocity"

    kind = "tiny"
    transformer_class = "WanTransformer3DModel"
    subfolders = SUBFOLDERS
    source_hint = "run `dvc repro teacher` (or `dcm teacher`) to train it"
    # What the parameter-efficient detail expert copies: Wan's timestep path (time embedder and
    # its projection to the blocks' modulation) and the output modulation and projection.
    timestep_layers = WAN_TIMESTEP_LAYERS

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings ``(B, L, D)``; padding positions are zeroed, as Wan's pipeline does."""
        tokens = self.tokenizer(
            [p.lower() for p in prompts],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return hidden * tokens.attention_mask[..., None].to(hidden.dtype)

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE slot: identity in pixel space (``(B, 3, T, H, W)`` in [-1, 1])."""
        return pixels

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return 3, frames, height, width

    def velocity(self, transformer: torch.nn.Module, latents: torch.Tensor, sigma: torch.Tensor,
                 text: torch.Tensor) -> torch.Tensor:
        """The flow velocity, whatever the recipe: coordinates go in as extra channels, and a
        clean-sample output ``x0`` becomes ``(x_sigma - x0) / sigma`` (sigma floored, as JiT does)."""
        inputs = torch.cat([latents, coordinate_channels(latents)], 1) if self.coordinate_channels else latents
        out = wan_velocity(transformer, inputs, sigma, text)
        if self.prediction == "sample":
            s = torch.as_tensor(sigma, dtype=out.dtype, device=out.device).expand(out.shape[0])
            return (latents - out) / s.clamp(min=SAMPLE_PREDICTION_SIGMA_FLOOR).view(-1, 1, 1, 1, 1)
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, **_) -> TinyBackbone:
        return load_tiny_backbone(path)

    @classmethod
    def text_tokens(cls, model: ModelParams) -> int:
        return model.tiny.text_max_length

    @classmethod
    def skeleton(cls, model: ModelParams, path: str | Path | None = None) -> TinyBackbone:
        """Built from ``model.tiny`` on the meta device (``path`` is not read), the global random state untouched."""
        from accelerate import init_empty_weights

        with torch.random.fork_rng(devices=[]), init_empty_weights():
            return build_tiny_backbone(model.tiny)

    def save_pretrained(self, path: str | Path, transformer: torch.nn.Module | None = None) -> None:
        path = Path(path)
        (transformer or self.transformer).save_pretrained(path / "transformer")
        self.text_encoder.save_pretrained(path / "text_encoder")
        self.tokenizer.save_pretrained(path / "tokenizer")
        info = {"kind": self.kind, "max_length": self.max_length, "coordinate_channels": self.coordinate_channels,
                "prediction": self.prediction}
        (path / "backbone.json").write_text(json.dumps(info) + "\n")


# A clean-sample prediction divides by sigma to give a velocity; below this sigma the division
# is floored (Li & He, arXiv 2511.13720, clip the same denominator at 0.05).
SAMPLE_PREDICTION_SIGMA_FLOOR = 0.05


def coordinate_channels(latents: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W)``: frame, row and column of every position, each in [-1, 1]. The stock
    transformer sees positions only through RoPE (relative) in self-attention, so without these
    it cannot place an object, or order frames, when its input is pure noise."""
    b, _, t, h, w = latents.shape
    axes = [torch.linspace(-1, 1, n, dtype=latents.dtype, device=latents.device) for n in (t, h, w)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid.expand(b, -1, -1, -1, -1)


def _build_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for word in word_list():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=max_length
    )


def adaln_zero_init(transformer: WanTransformer3DModel) -> None:
    """DiT's adaLN-Zero initialisation: every block starts as the identity (modulation gates and
    the ungated cross-attention output are zero) and the output is zero, which makes a small
    transformer trained from scratch converge much faster than diffusers' default init."""
    for module in transformer.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    zero = [transformer.condition_embedder.time_proj, transformer.proj_out]
    zero += [block.attn2.to_out[0] for block in transformer.blocks]
    for module in zero:
        torch.nn.init.zeros_(module.weight)
        torch.nn.init.zeros_(module.bias)
    for table in [transformer.scale_shift_table, *(block.scale_shift_table for block in transformer.blocks)]:
        torch.nn.init.zeros_(table)


def build_tiny_backbone(params: TinyModelParams, seed: int = 0) -> TinyBackbone:
    """A freshly initialised tiny backbone (transformer random, text encoder frozen)."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _build_tokenizer(params.text_max_length)
    torch.manual_seed(params.text_seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=params.text_dim,
            d_kv=params.text_dim // params.text_heads,
            d_ff=params.text_dim * 2,
            num_layers=params.text_layers,
            num_heads=params.text_heads,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval().requires_grad_(False)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=tuple(params.patch_size),
        num_attention_heads=params.num_attention_heads,
        attention_head_dim=params.attention_head_dim,
        in_channels=6 if params.coordinate_channels else 3,
        out_channels=3,
        text_dim=params.text_dim,
        freq_dim=params.freq_dim,
        ffn_dim=params.ffn_dim,
        num_layers=params.num_layers,
        rope_max_seq_len=64,
    )
    if params.init == "adaln_zero":
        adaln_zero_init(transformer)
    return TinyBackbone(transformer, text_encoder, tokenizer, params.text_max_length,
                        params.coordinate_channels, params.prediction)


def load_tiny_backbone(path: str | Path) -> TinyBackbone:
    """Load a saved tiny backbone directory; a missing part is an error naming the file expected."""
    from diffusers import WanTransformer3DModel
    from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

    path = check_model_dir(path, (*SUBFOLDERS, "backbone.json"), "tiny",
                           "run `dcm teacher` or `dvc repro teacher` to create it")
    info = json.loads((path / "backbone.json").read_text())
    transformer = WanTransformer3DModel.from_pretrained(path / "transformer")
    text_encoder = UMT5EncoderModel.from_pretrained(path / "text_encoder").eval().requires_grad_(False)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer")
    return TinyBackbone(transformer, text_encoder, tokenizer, int(info["max_length"]),
                        bool(info.get("coordinate_channels", False)), info.get("prediction", "velocity"))
