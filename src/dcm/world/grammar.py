"""The toy world's prompt grammar.

Every prompt has the form ``a {color} {shape} moving {direction} on a {texture} background``.
The vocabulary is small and closed so that an evaluator can recover every attribute from a
video, which is what makes quality measurable honestly on the embedded default.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from dcm.errors import DcmError

# Saturated object colours (RGB in [0, 1]); backgrounds are grayscale, so saturation
# separates the object from the scene.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.08),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Unit motion vectors in image coordinates (x to the right, y downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
TEXTURES: tuple[str, ...] = ("stripes", "checker", "diagonal")

TEMPLATE = "a {color} {shape} moving {direction} on a {texture} background"
_PATTERN = re.compile(r"^a (\S+) (\S+) moving (\S+) on a (\S+) background$")


class PromptError(DcmError, ValueError):
    """A prompt that is outside the toy world's grammar."""


@dataclass(frozen=True)
class Prompt:
    """The four attributes a toy-world prompt fixes."""

    color: str
    shape: str
    direction: str
    texture: str

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("color", self.color, tuple(COLORS)),
            ("shape", self.shape, SHAPES),
            ("direction", self.direction, tuple(DIRECTIONS)),
            ("texture", self.texture, TEXTURES),
        ):
            if value not in allowed:
                raise PromptError(
                    f"unknown {field} {value!r}; allowed {field}s: {', '.join(allowed)} (vocabulary: {vocabulary()})"
                )

    @property
    def text(self) -> str:
        return TEMPLATE.format(**self.__dict__)

    def __str__(self) -> str:
        return self.text


def vocabulary() -> str:
    """A human-readable listing of the grammar, for error messages and ``--help``."""
    return (
        f"template: {TEMPLATE!r}; colors: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)}; "
        f"directions: {', '.join(DIRECTIONS)}; textures: {', '.join(TEXTURES)}"
    )


def parse_prompt(text: str) -> Prompt:
    """Parse a prompt string; anything outside the grammar is a :class:`PromptError`."""
    match = _PATTERN.match(" ".join(text.strip().lower().split()))
    if match is None:
        raise PromptError(f"prompt {text!r} does not follow the toy grammar ({vocabulary()})")
    return Prompt(*match.groups())


def all_prompts() -> list[Prompt]:
    """Every prompt of the grammar, in a fixed order."""
    return [
        Prompt(c, s, d, t)
        for c, s, d, t in itertools.product(COLORS, SHAPES, DIRECTIONS, TEXTURES)
    ]


def word_list() -> list[str]:
    """Every word a toy prompt can contain, for the word-level tokenizer."""
    words = set(TEMPLATE.replace("{", " ").replace("}", " ").split())
    words -= {"color", "shape", "direction", "texture"}
    words |= set(COLORS) | set(SHAPES) | set(DIRECTIONS) | set(TEXTURES)
    return sorted(words)
