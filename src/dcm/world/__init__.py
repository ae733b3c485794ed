"""The procedural text-to-video toy world: grammar, renderer and analytic evaluator."""

from dcm.world.grammar import Prompt, PromptError, all_prompts, parse_prompt, vocabulary
from dcm.world.render import WorldConfig, render_batch, render_video

__all__ = [
    "Prompt",
    "PromptError",
    "WorldConfig",
    "all_prompts",
    "parse_prompt",
    "render_batch",
    "render_video",
    "vocabulary",
]
