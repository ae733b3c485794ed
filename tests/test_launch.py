"""dcm.launch: the accelerate command it builds and its refusals (a real two-process CPU run through the
launch params: tests/test_distill.py::test_two_cpu_processes_through_the_launch_params)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from dcm.config import ParamsError, parse_params
from dcm.launch import launch_command, launched_by_accelerate, relaunch

ROOT = Path(__file__).resolve().parents[1]
CPU_2PROC = "configs/accelerate/cpu_2proc.yaml"


def _params(**launch):
    return parse_params({"launch": launch})


def test_command_for_two_cpu_processes(monkeypatch):
    monkeypatch.chdir(ROOT)
    argv, env = launch_command(_params(num_processes=2, config_file=CPU_2PROC), ["stages/distill.py", "semantic"], 0)
    assert argv == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
                    "--config_file", str(ROOT / CPU_2PROC), "stages/distill.py", "semantic"]
    assert env == {"ACCELERATE_USE_CPU": "true"}


def test_fsdp_wraps_only_the_backbone_blocks(monkeypatch):
    monkeypatch.chdir(ROOT)
    argv, env = launch_command(_params(num_processes=8, config_file="configs/accelerate/fsdp.yaml"), ["s.py"], 8)
    assert argv[argv.index("--fsdp_transformer_layer_cls_to_wrap") + 1] == "WanTransformerBlock"
    assert env == {}


@pytest.mark.parametrize("launch, gpus, message", [
    ({"num_processes": 2, "config_file": "configs/accelerate/nope.yaml"}, 0,
     "launch.config_file = 'configs/accelerate/nope.yaml': no such file"),
    ({"num_processes": 4}, 2, "launch.num_processes = 4 but this machine has 2 CUDA GPU(s): allowed 1..2"),
    ({"num_processes": 2, "config_file": "configs/accelerate/fsdp.yaml"}, 0, "needs CUDA GPUs"),
    ({"num_processes": 2, "config_file": "configs/accelerate/single_gpu.yaml"}, 2, "runs one process"),
])
def test_refusals_name_the_key(monkeypatch, launch, gpus, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ParamsError, match=re.escape(message)):
        launch_command(_params(**launch), ["s.py"], gpus)


def test_no_relaunch_inside_a_launched_process(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched_by_accelerate()
    relaunch(_params(num_processes=2, config_file="does/not/exist.yaml"), ["s.py"])  # returns: no check, no launch


def test_no_relaunch_for_one_plain_process(monkeypatch):
    for name in ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    relaunch(_params(num_processes=1), ["s.py"])
