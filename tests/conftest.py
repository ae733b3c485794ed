import os

import pytest

from dcm.config import Params, parse_params

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def world():
    return Params().world.to_config()


@pytest.fixture
def micro_params() -> Params:
    """A model and schedule small enough to train a few steps in seconds."""
    return parse_params({
        "model": {"tiny": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 32,
                           "freq_dim": 16, "text_dim": 16, "text_layers": 1, "text_heads": 1}},
        "teacher": {"steps": 6, "batch_size": 2, "warmup_steps": 2, "checkpoint_every": 3, "eval_every": 6,
                    "eval_prompts": 2, "eval_sample_steps": 2},
        "teacher_eval": {"videos": 3, "batch_size": 2},
        "flow": {"steps": 4},
        "boundary": 2,
    })
