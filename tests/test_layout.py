"""The house's rules: layers import downwards only, DVC sees every file and param a stage reads."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcm.config import STAGE_PARAMS
from dcm.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_the_package_is_layered():
    """pyproject.toml's import-linter contract: every module imports only from layers below its own."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e .[test])")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout


def test_dvc_params_are_the_stage_params_defined_in_code():
    assert {stage: tuple(spec["params"]) for stage, spec in DVC.items()} == STAGE_PARAMS


def test_dvc_runs_every_stage_of_the_registry_as_the_cli_does():
    """dvc.yaml's commands are dcm.stages.STAGES' scripts, which `dcm <stage>` runs through the same
    dcm.stages.run_stage; each script is two lines that name its stage."""
    from dcm.cli import STAGE_COMMANDS

    assert {stage: spec["cmd"] for stage, spec in DVC.items()} == {s.name: s.command for s in STAGES.values()}
    assert set(STAGE_COMMANDS) == set(STAGES)
    for stage in STAGES.values():
        script = (ROOT / stage.script).read_text()
        assert "from dcm.stages import run_stage" in script and "run_stage(" in script
        assert _imported_files(ROOT / stage.script) == {SRC / "dcm/__init__.py", SRC / "dcm/stages/__init__.py"}


def _module_file(name: str) -> Path | None:
    path = SRC / Path(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def _imported_files(path: Path) -> set[Path]:
    """The dcm files ``path`` can import, function-local imports included (with their packages)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dcm":
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.split(".")[0] == "dcm"}
    files = set()
    for name in names:
        parts = name.split(".")
        files |= {f for i in range(1, len(parts) + 1) if (f := _module_file(".".join(parts[:i])))}
    return files


def code_of(script: Path) -> set[Path]:
    """Every file of the package that a stage script can run: what it imports, and what
    dcm.stages.run_stage imports by name for the stages it runs (their module in dcm.stages, and
    dcm.launch where the stage can re-launch itself)."""
    stages = [stage for stage in STAGES.values() if ROOT / stage.script == script]
    named = {SRC / "dcm/stages" / f"{stage.module}.py" for stage in stages}
    named |= {SRC / "dcm/launch.py" for stage in stages if stage.relaunch}
    seen, todo = set(named), [script, *named]
    while todo:
        for path in _imported_files(todo.pop()) - seen:
            seen.add(path)
            todo.append(path)
    return seen


@pytest.mark.parametrize("stage", sorted(DVC))
def test_every_file_a_stage_runs_is_one_of_its_dvc_deps(stage):
    """Editing any .py a stage runs makes `dvc status` report the stage as changed."""
    spec = DVC[stage]
    script = ROOT / spec["cmd"].split()[1]
    deps = [ROOT / d for d in spec["deps"]]
    assert script in deps
    uncovered = [str(f.relative_to(ROOT)) for f in code_of(script)
                 if not any(f == d or d in f.parents for d in deps)]
    assert not uncovered, f"{stage} runs files dvc.yaml does not list: {uncovered}"
