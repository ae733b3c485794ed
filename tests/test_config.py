"""Typed parameters: defaults are valid, bad values fail early and say what is allowed."""

from pathlib import Path

import pytest
import yaml

from dcm.config import Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parent.parent


def _dotted(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys |= _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def test_repository_params_are_valid_and_spell_out_every_key():
    """Every setting a stage reads is in params.yaml, so DVC sees it: no default hides in the code."""
    load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "boundary" in raw  # top level, for `dvc exp run -S boundary=30`
    assert _dotted(raw) == set(Params().flat())


def test_the_code_defaults_are_the_repository_params():
    """One set of defaults: a key a params file leaves out takes the value params.yaml runs."""
    assert Params() == load_params(ROOT / "params.yaml")


@pytest.mark.parametrize("section", sorted(k for k, v in Params().model_dump().items() if isinstance(v, dict)))
def test_a_section_given_in_part_is_completed_with_the_repository_values(section):
    """An empty (or partial) section takes its class's defaults, which must be the same values (``lcm``
    and ``pcm`` share a schema but not their defaults)."""
    assert parse_params({section: {}}) == load_params(ROOT / "params.yaml")


@pytest.mark.parametrize("data, key, allowed", [
    ({"teacher": {"lr": -1}}, "teacher.lr = -1", "greater than 0"),
    ({"teacher": {"timestep_sampling": "cosine"}}, "teacher.timestep_sampling = 'cosine'", "uniform"),
    ({"world": {"frames": 2}}, "world.frames = 2", "greater than or equal to 4"),
    ({"boundary": 50}, "boundary", "[1, 49]"),
    ({"teacher": {"lrr": 0.1}}, "teacher.lrr", "Extra inputs are not permitted"),
    ({"world": {"speed_min": 3.0, "speed_max": 2.0}}, "world", "speed_max"),
    ({"model": {"backbone": "sdxl"}}, "model.backbone = 'sdxl'", "allowed: tiny, wan, cogvideox, hunyuanvideo"),
])
def test_bad_values_name_key_value_and_allowed_range(data, key, allowed):
    with pytest.raises(ParamsError) as err:
        parse_params(data, "params.yaml")
    message = str(err.value)
    assert key in message and allowed in message
    assert message.startswith("invalid parameters in params.yaml")


def test_boundary_is_checked_against_the_grid():
    short = {"flow": {"steps": 4}, "sample": {"steps": [2]}}
    assert parse_params({"boundary": 3, **short}).boundary == 3
    with pytest.raises(ParamsError, match="flow.steps = 4"):
        parse_params({"boundary": 4, **short})


def test_sample_steps_must_fit_both_sub_trajectories():
    with pytest.raises(ParamsError, match="boundary = 47"):
        parse_params({"boundary": 47})
    with pytest.raises(ParamsError, match="sample.steps"):
        parse_params({"sample": {"steps": [0]}})


def test_missing_file_and_non_mapping_are_clear(tmp_path):
    with pytest.raises(ParamsError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)


@pytest.mark.parametrize("text, key, lines", [
    ("boundary: 3\nboundary: 2\n", "'boundary'", "line 2 is already given at line 1"),
    ("teacher:\n  lr: 0.1\n  steps: 5\n  lr: 0.2\n", "'lr'", "line 4 is already given at line 2"),
    ("model:\n  tiny:\n    num_layers: 2\n    num_layers: 3\n", "'num_layers'", "line 4 is already given at line 3"),
])
def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path, text, key, lines):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: key {key} at {lines}; keep one of them (otherwise the last would silently win)"


def test_a_key_merged_in_with_yaml_merge_may_be_overridden(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("teacher:\n  <<: {lr: 0.1, steps: 9000}\n  lr: 0.2\n")
    assert load_params(path).teacher.lr == 0.2


def test_flat_params_use_dotted_keys():
    flat = Params().flat()
    assert flat["teacher.lr"] == Params().teacher.lr
    assert flat["boundary"] == Params().boundary == 12
    assert flat["model.tiny.num_layers"] == Params().model.tiny.num_layers


def test_no_default_text_value_changes_type_when_dvc_writes_it_unquoted():
    """`dvc exp run -S` rewrites params.yaml without quotes; a value such as `no` would read back
    as a boolean (YAML 1.1), so no allowed default may be such a word."""
    import yaml

    from dcm.config import Params

    for key, value in Params().flat().items():
        if isinstance(value, str):
            assert yaml.safe_load(f"k: {value}")["k"] == value, key


def test_a_backbone_is_allowed_once_it_is_registered(monkeypatch):
    """model.backbone takes the names of dcm.models.BACKBONES: a new adapter is its module and a line there."""
    from dcm.models import BACKBONES, WanBackbone

    class Wan22Backbone(WanBackbone):
        kind = "wan2.2"

    new = {"model": {"backbone": "wan2.2", "path": "/models/wan2.2"}}
    with pytest.raises(ParamsError, match="allowed: "):
        parse_params(new)
    monkeypatch.setitem(BACKBONES, Wan22Backbone.kind, Wan22Backbone)
    assert parse_params(new).model.backbone == "wan2.2"
