"""End to end: `dvc repro` with smoke params in a fresh git repository, outputs and MLflow."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from dcm.io import read_manifest, read_mp4

ROOT = Path(__file__).resolve().parent.parent
SMOKE = yaml.safe_load((Path(__file__).parent / "smoke_params.yaml").read_text())
STAGES = ["boundary", "dataset", "detail", "evaluate", "lcm", "pcm", "report", "sample", "semantic", "teacher",
          "teacher_eval", "trajectories", "validation"]


def smoke_params() -> dict:
    """params.yaml with the smoke overrides merged in, key by key."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def merge(into, overrides):
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(params, SMOKE)
    return params


def _run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for item in ("dvc.yaml", "stages", "src", ".dvcignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / item)
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    (repo / "params.yaml").write_text(yaml.safe_dump(smoke_params(), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(["git", "init", "-q"], repo, env)
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "smoke"], repo, env)
    first = _run(["dvc", "repro"], repo, env)
    return repo, env, first


def test_repro_writes_the_teacher_and_its_report(repo):
    repo, _, _ = repo
    assert (repo / "artifacts/teacher/model/transformer/config.json").exists()
    assert (repo / "artifacts/teacher/checkpoint.safetensors").exists()
    records = read_manifest(repo / "reports/teacher/samples")
    assert len(records) == 3
    assert {r["method"] for r in records} == {"teacher"} and {r["steps"] for r in records} == {8}
    video = read_mp4(repo / "reports/teacher/samples" / records[0]["file"])
    assert video.shape == (8, 32, 32, 3)
    metrics = json.loads((repo / "reports/teacher/metrics.json").read_text())
    assert {"total", "quality", "semantic", "color", "motion_direction", "batch_seconds"} <= metrics.keys()
    assert (repo / "reports/teacher/grid.png").stat().st_size > 1000
    assert "accuracy" in (repo / "reports/teacher.md").read_text()
    assert (repo / "reports/teacher/denoising.png").stat().st_size > 0  # the denoising probe's figure
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == STAGES
    for stage in ("semantic", "lcm", "pcm"):
        assert (repo / "artifacts" / stage / "model" / "config.json").exists()
    assert (repo / "artifacts/detail/detail.safetensors").exists()
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert sorted(metrics) == ["dcm@2", "dcm@4", "lcm@2", "lcm@4", "pcm@2", "pcm@4", "teacher@8", "undistilled@2",
                              "undistilled@4"]
    for key, entry in metrics.items():
        assert {"latency_s", "forward_passes", "total", "quality", "semantic", "psnr_vs_teacher"} <= entry.keys(), key
        assert entry["vbench_dimensions"] == "temporal_flickering"
        lo, hi = entry["total_interval"]  # bootstrap over the run's videos
        assert lo <= entry["total"] <= hi
    latency = json.loads((repo / "artifacts/samples/latency.json").read_text())
    assert {len(entry["rounds"]) for entry in latency.values()} == {1}  # smoke params: one interleaved round
    assert len({entry["timed_with"] for entry in latency.values()}) == 1  # the toy world times all methods together
    for key in metrics:
        records = read_manifest(repo / "artifacts/samples" / key)
        assert [r["seed"] for r in records] == [r["seed"] for r in read_manifest(repo / "artifacts/samples/teacher@8")]
    report = (repo / "reports/report.md").read_text()
    assert "Table 1" in report and "Table 3" in report
    assert "The paper's claims, decided over this run's videos" in report
    full_dcm = next(line for line in report.splitlines() if line.startswith("| OD+PE+TC+GF |"))
    assert "(n=1) [" in full_dcm  # this run's Total in Table 3, with its interval over videos
    for figure in ("adjacent_l1.png", "noise_levels_lcm.png", "parameter_change.png", "methods_4step.png",
                   "methods_4step.gif"):
        assert (repo / "reports/figures" / figure).stat().st_size > 500, figure


def test_second_repro_reuses_everything(repo):
    repo, env, _ = repo
    out = _run(["dvc", "repro"], repo, env)
    assert "didn't change, skipping" in out
    assert "Running stage" not in out


def test_each_stage_logged_one_tagged_mlflow_run_at_the_repo_root(repo):
    repo, _, _ = repo
    assert (repo / "mlflow.db").exists()
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["dcm"], output_format="pandas")
    parents = runs[runs["tags.dcm.parent"] == "true"]
    assert len(parents) == 1  # one run for the experiment (here the workspace), stages nested under it
    runs = runs[runs["tags.dcm.parent"] != "true"]
    # the dataset stage, with nothing to do while the students learn from trajectories, opens no run
    assert sorted(runs["tags.dcm.stage"]) == [stage for stage in STAGES if stage != "dataset"]
    assert set(runs["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}
    assert parents.iloc[0]["metrics.dcm_4/total"] >= 0  # headline metrics on the parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert set(runs["tags.git.revision"]) == {head}
    assert set(runs["tags.dvc.exp_name"]) == {"workspace"}
    assert set(runs["params.teacher.lr"]) == {str(0.001)}
    teacher_eval = runs[runs["tags.dcm.stage"] == "teacher_eval"].iloc[0]
    assert 0.0 <= teacher_eval["metrics.total"] <= 1.0
    assert teacher_eval["artifact_uri"].startswith((repo / "mlartifacts").as_uri())
    assert (repo / "mlartifacts").is_dir()


@pytest.mark.parametrize("override, changed", [
    ({"ablation": {"gf": False}}, {"detail"}),
    ({"ablation": {"tc": False}}, {"semantic", "detail"}),
    ({"boundary": 3}, {"boundary", "semantic", "detail", "sample", "report"}),
    ({"pcm": {"phases": 4}}, {"pcm"}),
    ({"teacher_eval": {"videos": 2}}, {"teacher_eval"}),
    ({"distill": {"source": "data"}}, {"dataset", "semantic", "detail", "lcm", "pcm", "report"}),
])
def test_a_param_change_reruns_exactly_what_depends_on_it(repo, override, changed):
    repo, env, _ = repo
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    for key, value in override.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    try:
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        status = json.loads(_run(["dvc", "status", "--json"], repo, env).strip().splitlines()[-1])
        directly = {stage for stage, reasons in status.items()  # {"detail": [{"changed deps": {"params.yaml": ...}}]}
                    if any("params.yaml" in r.get("changed deps", {}) for r in reasons if isinstance(r, dict))}
        assert directly == changed
    finally:
        (repo / "params.yaml").write_text(original)


@pytest.mark.parametrize("module", ["src/dcm/flow.py", "src/dcm/sampling.py", "src/dcm/world/metrics.py"])
def test_editing_code_a_stage_runs_makes_dvc_see_that_stage_changed(repo, module):
    """`dvc status` names exactly the stages that can run the edited file."""
    from test_layout import DVC, code_of

    repo, env, _ = repo
    path = repo / module
    original = path.read_text()
    expected = {stage for stage, spec in DVC.items()
                if ROOT / module in code_of(ROOT / spec["cmd"].split()[1])}
    try:
        path.write_text(original + "\n# edited\n")
        status = json.loads(_run(["dvc", "status", "--json"], repo, env).strip().splitlines()[-1])
        changed = {stage for stage, reasons in status.items()  # a dep is the file or a folder holding it
                   if any(module == dep or module.startswith(f"{dep}/")
                          for r in reasons if isinstance(r, dict) for dep in r.get("changed deps", {}))}
        assert expected and changed == expected
    finally:
        path.write_text(original)


@pytest.fixture(scope="module")
def grid(repo, tmp_path_factory):
    """A real MLflow tracking server on localhost, holding a two-experiment boundary grid run by
    `dcm grid` with two parallel jobs; stopped after the module."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from mlflow_ui_check import serve

    repo, env, _ = repo
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "baseline outputs"], repo, env)
    store = tmp_path_factory.mktemp("server") / "server.db"
    with serve(f"sqlite:///{store}", env) as url:
        env = {**env, "MLFLOW_TRACKING_URI": url}
        out = _run([str(Path(sys.executable).parent / "dcm"), "grid", "boundary", "--values", "3,5", "--jobs", "2",
                    "--prefix", "t"], repo, env)
        yield url, repo, env, out


def _api(url, path, body=None):
    import urllib.request

    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_a_queued_grid_with_two_jobs_lands_in_a_tracking_server(grid):
    tracking_server, repo, env, out = grid
    assert "finished: t-boundary-3, t-boundary-5" in out

    experiment = _api(tracking_server, "experiments/get-by-name?experiment_name=dcm")["experiment"]
    runs = _api(tracking_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                                 "max_results": 500})["runs"]

    def tags(run):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    parents = {tags(r)["dvc.exp_name"]: r for r in runs if tags(r).get("dcm.parent") == "true"}
    assert {"t-boundary-3", "t-boundary-5"} <= set(parents)
    for boundary in (3, 5):
        parent = parents[f"t-boundary-{boundary}"]
        children = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
        stages = {tags(r)["dcm.stage"] for r in children}
        assert {"semantic", "detail", "sample", "evaluate", "report"} <= stages
        assert all(tags(r)["boundary"] == str(boundary) for r in children)
        assert all(tags(r)["dvc.baseline_rev"] for r in children)
        params = {p["key"]: p["value"] for p in parent["data"]["params"]}
        assert params["boundary"] == str(boundary)
        metrics = {m["key"] for m in parent["data"]["metrics"]}
        assert "dcm_4/total" in metrics
        evaluate = next(r for r in children if tags(r)["dcm.stage"] == "evaluate")
        listing = _api(tracking_server, f"artifacts/list?run_id={evaluate['info']['run_id']}")
        assert "metrics.json" in {f["path"] for f in listing["files"]}
        artifact_root = evaluate["info"]["artifact_uri"].removeprefix("file://")
        assert artifact_root.startswith(str(repo / "mlartifacts"))  # not inside DVC's temporary copy
        assert (Path(artifact_root) / "metrics.json").exists()
    assert not list((repo / ".dvc" / "tmp" / "exps").glob("tmp*/reports/metrics.json"))

    dcm = str(Path(sys.executable).parent / "dcm")
    out = _run([dcm, "compare"], repo, env)
    assert "experiments" in out
    ablation = (repo / "reports/ablation.md").read_text()
    assert "| OD+PE+TC+GF |" in ablation and "t-boundary-" in ablation
    assert (repo / "reports/boundary.png").stat().st_size > 1000
    _run([dcm, "compare", "--source", "dvc", "--out", "reports/from_dvc"], repo, env)
    assert "| OD+PE+TC+GF |" in (repo / "reports/from_dvc/ablation.md").read_text()


def test_the_mlflow_ui_shows_the_grid_and_compares_its_runs(grid):
    """In headless Chromium: the experiment's runs page (the URL docs/experiments-and-mlflow.md gives)
    shows the runs table, the runs are named after the DVC experiments, and their compare view lists
    boundary and dcm_4/total (scripts/mlflow_ui_check.py; the screenshot in the same document comes
    from the same script)."""
    from mlflow_ui_check import check_ui, chromium

    if chromium() is None:
        pytest.skip("no chromium on PATH: install Debian's chromium package (`scripts/bootstrap.py test` does)")
    url, _, _, _ = grid
    pages = check_ui(url, "dcm", ["t-boundary-3", "t-boundary-5"])
    assert "Training runs" in pages["runs_page"]  # the runs table, not the GenAI overview


def test_a_grid_with_a_failing_experiment_fails_and_names_it(repo):
    from dcm.config import load_params
    from dcm.experiments import GridError, run_grid

    repo, env, _ = repo
    old = dict(os.environ)
    os.environ.update(env)
    try:
        params = load_params(repo / "params.yaml")
        with pytest.raises(ValueError, match="'invalid'.*distill.batch_size"):  # refused before queueing
            run_grid([("invalid", {"distill.batch_size": 0})], params, prefix="v", cwd=repo)
        with pytest.raises(GridError, match="f-broken"):  # valid params, fails while it runs
            run_grid([("fine", {"teacher_eval.batch_size": 1}),
                      ("broken", {"trajectories.prompt_file": "no-such-prompts.txt"})],
                     params, jobs=2, prefix="f", cwd=repo)
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_an_experiment_learning_from_the_rendered_dataset_runs_every_student_on_it(repo):
    """`dvc exp run -S distill.source=data`: the dataset stage renders and encodes the toy world's ground
    truth, every student learns from it (dvc.yaml's `artifacts/${distill.source}`), and the trajectories
    are not regenerated."""
    repo, env, _ = repo
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "add", "-A"], repo, env)  # the workspace's outputs are the experiment's baseline
    _run([*git, "commit", "-qm", "outputs", "--allow-empty"], repo, env)
    out = _run(["dvc", "exp", "run", "--temp", "-n", "from-data", "-S", "distill.source=data",
                "-S", "dataset.videos=4"], repo, env)
    for stage in ("dataset", "semantic", "detail", "lcm", "pcm", "sample", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out, stage
    assert "Running stage 'trajectories'" not in out
    # read by a fresh process: this one's MLflow store for the same file may hold an older snapshot
    query = ("import json, mlflow; runs = mlflow.search_runs(experiment_names=['dcm']); "
             "runs = runs[(runs['tags.dvc.exp_name'] == 'from-data') & (runs['tags.dcm.parent'] != 'true')]; "
             "print(json.dumps({r['tags.dcm.stage']: {k: v for k, v in r.items() if k.startswith(('metrics.', "
             "'params.')) and v == v and v is not None} for _, r in runs.iterrows()}, default=str))")
    runs = json.loads(_run([sys.executable, "-c", query], repo,
                           {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}).strip().splitlines()[-1])
    assert runs["dataset"]["metrics.dataset_kept"] == 4 and runs["dataset"]["metrics.dataset_skipped"] == 0
    assert {r["params.distill.source"] for r in runs.values()} == {"data"}
    assert runs["semantic"]["metrics.val_psnr"] > 0
