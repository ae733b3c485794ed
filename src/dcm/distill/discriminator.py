"""GAN + feature matching for the detail expert (paper Sec. 3.4, Eq. 9-10).

The frozen teacher is the discriminator's backbone: forward hooks tap every ``stride``-th
block of the backbone's ``feature_blocks``, and one small convolutional head per tap scores
every video token. Token grids come from each input's shape (``Backbone.token_grid``), so any
frame count or resolution works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dcm.models.base import token_features


class FeatureTaps:
    """Collect the outputs of selected blocks during a forward pass."""

    def __init__(self, blocks: Sequence[nn.Module], stride: int):
        self.indices = list(range(stride - 1, len(blocks), stride)) or [len(blocks) - 1]
        self.blocks = [blocks[i] for i in self.indices]
        self.features: list[torch.Tensor] = []

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[torch.Tensor]]:
        self.features = []
        handles = [b.register_forward_hook(lambda _m, _i, out: self.features.append(token_features(out)))
                   for b in self.blocks]
        try:
            yield self.features
        finally:
            for h in handles:
                h.remove()


class DiscriminatorHead(nn.Module):
    """conv -> GroupNorm -> LeakyReLU -> residual 1x1 block -> 1 logit per token. ``frames`` 1: a 1x1
    conv over each frame's tokens; more: the first conv spans ``frames`` x 3 x 3 tokens, so the head
    judges motion as well as appearance."""

    def __init__(self, channels: int, width: int, frames: int = 1):
        super().__init__()
        groups = max(g for g in (32, 16, 8, 4, 2, 1) if width % g == 0)
        conv, one = (nn.Conv2d, 1) if frames == 1 else (nn.Conv3d, (1, 1, 1))
        first = nn.Conv2d(channels, width, 1) if frames == 1 else nn.Conv3d(
            channels, width, (frames, 3, 3), padding=(frames // 2, 1, 1))
        self.stem = nn.Sequential(first, nn.GroupNorm(groups, width), nn.LeakyReLU(0.2))
        self.block = nn.Sequential(conv(width, width, one), nn.GroupNorm(groups, width), nn.LeakyReLU(0.2))
        self.out = conv(width, 1, one)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.out(h + self.block(h))


class Discriminator(nn.Module):
    def __init__(self, channels: int, taps: int, width: int, frames: int = 1):
        super().__init__()
        self.frames = frames
        self.heads = nn.ModuleList(DiscriminatorHead(channels, width, frames) for _ in range(taps))

    def forward(self, features: Sequence[torch.Tensor], grid: tuple[int, int, int]) -> list[torch.Tensor]:
        """``features``: per tap ``(B, T'*H'*W', C)`` tokens -> per tap logits, one per token
        (``(B*T', 1, H', W')`` frame by frame, ``(B, 1, T', H', W')`` across frames)."""
        t, h, w = grid
        logits = []
        for head, tokens in zip(self.heads, features, strict=True):
            b, n, c = tokens.shape
            if n != t * h * w:
                raise ValueError(f"{n} tokens do not form the grid {grid}")
            x = tokens.reshape(b, t, h, w, c)
            x = x.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w) if self.frames == 1 else x.permute(0, 4, 1, 2, 3)
            logits.append(head(x.float()))
        return logits


def d_hinge(real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake, strict=True)) / len(real)


def g_hinge(fake: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(F.relu(1 - f).mean() for f in fake) / len(fake)
