"""Bad input gets one clear line, exit code 2 and no traceback, before anything is written.

Each case sets up a working directory, runs one `dcm` command, and checks the message names what
is wrong (the file or key, the value) and what to do, and that no file appeared or changed.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dcm.cli import app
from dcm.layout import Layout
from dcm.students import StudentRecord, learned_values
from dcm.tracking import TrackingServerError, check_tracking_server

from conftest import MICRO, MICRO_DISTILL, PRODUCTION

ROOT = Path(__file__).resolve().parent.parent
PARAMS = {**MICRO, **MICRO_DISTILL}


def _teacher(root: Path, micro_teacher: Path) -> None:
    shutil.copytree(micro_teacher, Layout(root).teacher_model)


def _manifest(root: Path, micro_teacher: Path, **spec) -> None:
    """A teacher and a trajectory manifest (no shards: the checks before loading read the spec only)."""
    _teacher(root, micro_teacher)
    params = PRODUCTION.with_overrides(PARAMS)
    steps = params.flow.steps
    body = {"steps": steps, "shift": params.flow.shift, "guidance_scale": params.trajectories.guidance_scale,
            "shape": [3, 8, 32, 32], "dtype": "float16", "stored": list(range(steps + 1)), **spec}
    path = Layout(root).trajectories / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"spec": body, "shards": []}))


def _records(root: Path, micro_teacher: Path) -> None:
    """A teacher and the four students' records, trained with the micro params (boundary 2)."""
    _teacher(root, micro_teacher)
    params = PRODUCTION.with_overrides(PARAMS)
    for stage, kind in (("semantic", "full"), ("detail", "pe"), ("lcm", "full"), ("pcm", "full")):
        directory = Layout(root).student(stage)
        directory.mkdir(parents=True)
        StudentRecord(stage, stage, kind, [], params.boundary, learned_values(params, stage)).write(directory)


@dataclass
class Case:
    name: str
    argv: list[str]
    message: list[str]  # substrings the one-line error contains
    params: dict | str = field(default_factory=dict)  # overrides of the micro params, or the file's raw text
    setup: Callable[[Path, Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)


TOY_AND_OTHER_PROMPTS = "a red circle moving left on a stripes background\n\nhello world\n"


def _prompt_file(root: Path, micro_teacher: Path) -> None:
    """A teacher and ``prompts.txt`` whose third line is outside the toy grammar."""
    _teacher(root, micro_teacher)
    (root / "prompts.txt").write_text(TOY_AND_OTHER_PROMPTS)


CASES = [
    # ---- params.yaml ---------------------------------------------------------------------------
    Case("unclosed bracket", ["params"], ["params.yaml is not valid YAML at line", "unclosed bracket"],
         params="boundary: [35\nworld: {frames: 8}\n"),
    Case("not a mapping", ["params"], ["params.yaml must hold a mapping of sections, got list"], params="- 1\n- 2\n"),
    Case("unknown key", ["params"], ["teacher.lrr", "Extra inputs are not permitted"], {"teacher": {"lrr": 0.1}}),
    Case("negative learning rate", ["teacher"], ["teacher.lr = -1", "greater than 0"], {"teacher": {"lr": -1}}),
    Case("teacher restart after the last step", ["teacher"], ["teacher: ", "restarts = [9]", "before steps (6)"],
         {"teacher": {"restarts": [9]}}),
    Case("boundary off the grid", ["params"], ["boundary = 9 must be a grid index in [1, 3]"], {"boundary": 9}),
    Case("odd dcm steps", ["sample"], ["sample.steps", "[3]", "even step counts"], {"sample": {"steps": [3]}}),
    Case("world that cannot fit", ["params"], ["world", "speed_max", "room"],
         {"world": {"speed_max": 6.0, "speed_min": 5.0}}),
    Case("real backbone without a path", ["teacher"], ["model.backbone = 'wan' needs model.path"],
         {"model": {"backbone": "wan"}}),
    Case("no such params file", ["params", "-p", "nope.yaml"], ["parameter file nope.yaml does not exist"]),
    Case("key given twice", ["params"], ["params.yaml: key 'boundary' at line 3 is already given at line 1",
                                         "keep one of them"], params="boundary: 2\nflow: {steps: 4}\nboundary: 3\n"),
    Case("nested key given twice", ["teacher"], ["params.yaml: key 'lr' at line 4 is already given at line 2"],
         params="teacher:\n  lr: 0.1\n  steps: 5\n  lr: 0.2\n"),
    Case("launch config that does not exist", ["semantic"], ["launch.config_file = 'no.yaml': no such file"],
         {"launch": {"num_processes": 2, "config_file": "no.yaml"}}),
    # ---- paths and prompts ---------------------------------------------------------------------
    Case("model.path that does not exist", ["teacher"], ["model.path /no/such/wan", "does not exist",
                                                         "never downloads"],
         {"model": {"backbone": "wan", "path": "/no/such/wan"}}),
    Case("incomplete checkpoint", ["teacher"], ["not a complete wan diffusers directory", "vae", "text_encoder"],
         {"model": {"backbone": "wan", "path": "ckpt"}},
         setup=lambda root, _: (root / "ckpt" / "transformer").mkdir(parents=True)),
    Case("prompt file that does not exist", ["trajectories"], ["prompt file missing.txt does not exist"],
         {"trajectories": {"prompt_file": "missing.txt"}}, setup=_teacher),
    Case("empty prompt file", ["trajectories"], ["prompt file empty.txt holds no prompts"],
         {"trajectories": {"prompt_file": "empty.txt"}},
         setup=lambda root, teacher: (_teacher(root, teacher), (root / "empty.txt").write_text("\n"))),
    Case("unknown VBench dimension", ["trajectories"], ["VBench has no dimension 'sharpness'", "known:"],
         {"trajectories": {"prompt_file": "vbench:sharpness"}}, setup=_teacher),
    Case("prompt outside the toy grammar", ["render", "a purple circle moving left on a stripes background"],
         ["unknown color 'purple'", "allowed colors: red, green, blue, yellow"]),
    Case("trajectory prompt file outside the toy grammar", ["trajectories"],
         ["prompt file prompts.txt, line 3: prompt 'hello world' does not follow the toy grammar",
          "template: 'a {color} {shape} moving {direction} on a {texture} background'", "model.backbone = 'tiny'"],
         {"trajectories": {"prompt_file": "prompts.txt"}}, setup=_prompt_file),
    Case("sample prompt file outside the toy grammar", ["sample"],
         ["prompt file prompts.txt, line 3: prompt 'hello world' does not follow the toy grammar"],
         {"sample": {"prompt_file": "prompts.txt"}}, setup=_prompt_file),
    Case("VBench's prompts on the tiny backbone", ["sample"],
         ["prompt source 'vbench', prompt 1:", "does not follow the toy grammar"],
         {"sample": {"prompt_file": "vbench"}}, setup=_teacher),
    # ---- the tracking server ------------------------------------------------------------------
    Case("tracking server that does not answer", ["boundary"],
         ["MLFLOW_TRACKING_URI = http://127.0.0.1:9: no MLflow server answers there", "Connection refused",
          "unset it to track into mlflow.db"], setup=_manifest, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
    # ---- stages run out of order ---------------------------------------------------------------
    Case("trajectories before the teacher", ["trajectories"], ["backbone.json is missing", "dvc repro teacher"]),
    Case("teacher_eval before the teacher", ["teacher-eval"], ["backbone.json is missing"]),
    Case("semantic before the trajectories", ["semantic"], ["trajectories/manifest.json is missing",
                                                            "dvc repro trajectories"], setup=_teacher),
    Case("trajectories of other settings", ["semantic"], ["made with other settings", "shift 5.0 there, 17.0 now",
                                                          "rerun the trajectories stage"],
         setup=lambda root, teacher: _manifest(root, teacher, shift=5.0)),
    Case("detail before semantic", ["detail"], ["semantic student is missing", "dvc repro semantic"],
         setup=_manifest),
    Case("a student before the validation set", ["lcm"], ["artifacts/validation holds no validation set",
                                                          "dvc repro validation", "distill.validate_every = 0"],
         setup=_manifest),
    Case("the data source before the dataset", ["semantic"], ["artifacts/data/manifest.json is missing",
                                                              "dvc repro dataset", "distill.source = 'data'"],
         {"distill": {"source": "data"}}, setup=_teacher),
    Case("a dataset folder that does not exist", ["dataset"], ["video dataset /no/such/videos does not exist",
                                                              "metadata.jsonl"],
         {"distill": {"source": "data"}, "dataset": {"path": "/no/such/videos"}}, setup=_teacher),
    Case("the data source on a real backbone without a dataset", ["params"],
         ["distill.source = 'data' on model.backbone = 'wan' needs dataset.path"],
         {"model": {"backbone": "wan", "path": "/some/wan"}, "distill": {"source": "data"}}),
    Case("sample before the students", ["sample"], ["lcm student is missing", "artifacts/lcm/expert.json"],
         setup=_teacher),
    Case("sample at a boundary the experts never learned", ["sample"],
         ["semantic was trained with other params", "boundary = 2 there, 3 in params.yaml", "dvc repro semantic"],
         {"boundary": 3, "sample": {"steps": [2]}}, setup=_records),
    Case("evaluate before sample", ["evaluate"], ["latency.json is missing", "dvc repro sample"]),
    Case("report before evaluate", ["report"], ["metrics.json is missing", "dvc repro evaluate"]),
    # ---- command-line options ------------------------------------------------------------------
    Case("export format", ["export", "--format", "onnx"], ["unknown --format 'onnx'; known: pipeline, lora"]),
    Case("export of the tiny teacher", ["export"], ["model.backbone = 'tiny' cannot be exported"]),
    Case("estimate of an unknown model", ["estimate", "--model", "wan9"], ["unknown model 'wan9'", "wan2.1-14b"]),
    Case("estimate sharding", ["estimate", "--sharding", "zero"], ["--sharding 'zero': use 'fsdp' or 'ddp'"]),
    Case("unknown grid", ["grid", "sizes"], ["unknown grid 'sizes'; known: ablations, boundary"]),
    Case("boundary sweep off the grid", ["grid", "boundary", "--values", "0,3"], ["boundary values [0]",
                                                                                 "outside the grid [1, 3]"]),
    Case("boundary sweep that is not numbers", ["grid", "boundary", "--values", "a,b"],
         ["--values 'a,b': 'a' is not an integer"]),
    Case("compare source", ["compare", "--source", "wandb"], ["--source 'wandb': use 'mlflow' or 'dvc'"]),
]


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, tmp_path, monkeypatch, micro_teacher):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if isinstance(case.params, str):
        (tmp_path / "params.yaml").write_text(case.params)
    else:
        overridden = PRODUCTION.with_overrides(PARAMS).model_dump(mode="json")
        for key, value in case.params.items():
            overridden[key] = {**overridden[key], **value} if isinstance(value, dict) else value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(overridden))
    if case.setup:
        case.setup(tmp_path, micro_teacher)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(app, case.argv)
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # no exception escaped: no traceback
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for part in case.message:
        assert part in lines[0], (part, lines[0])
    assert _snapshot(tmp_path) == before, "something was written"


def test_the_real_command_and_a_stage_script_print_no_traceback_unless_verbose(tmp_path):
    (tmp_path / "params.yaml").write_text("model: {backbone: wan, path: /no/such/wan}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    dcm = [sys.executable, "-m", "dcm.cli"]
    stage = subprocess.run([sys.executable, str(ROOT / "stages" / "teacher.py")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)  # as DVC runs it; `dcm` is the CliRunner's
    assert stage.returncode == 2
    assert "model.path /no/such/wan" in stage.stderr and "Traceback" not in stage.stderr
    verbose = subprocess.run([*dcm, "--verbose", "teacher"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_tracking_server_gets_seconds_to_answer_and_a_local_store_no_check(monkeypatch):
    from dcm import tracking

    monkeypatch.setattr(tracking, "SERVER_CHECK_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # takes connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        tick = time.perf_counter()
        with pytest.raises(TrackingServerError, match="no MLflow server answers there .*timed out"):
            check_tracking_server(f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert time.perf_counter() - tick < 5
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501 to GET
    with server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        check_tracking_server(f"http://127.0.0.1:{server.server_port}")  # any answer will do
    for local in ("sqlite:////no/such/mlflow.db", "/no/such/mlruns", "file:///no/such/mlruns"):
        check_tracking_server(local)
