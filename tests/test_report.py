"""The report decides the paper's claims on measured figures with their uncertainty: "yes" or "no"
only when the interval of the margin is clear of zero, "within noise" otherwise."""

import numpy as np
import pytest

from dcm.reporting.claims import Evidence, decide_claims
from dcm.evaluation.uncertainty import score_matrix
from dcm.world import all_prompts, render_video
from dcm.world.metrics import evaluate_video

TEACHER = "teacher@50"
CLAIMS = ["4 steps: Total DCM >= PCM >= LCM",
          "DCM@4 Total within 0.02 of the teacher's (teacher@50)",
          "DCM@2 Total within 0.05 of the teacher's (teacher@50)",
          "4 steps: DCM beats the teacher's own 4-step samples (distillation adds something)",
          "DCM@4 speed-up at least 90% of its cut in transformer calls (100 -> 4: 25.0x)",
          "4 steps: DCM per-step cost within 2% of LCM's (interleaved rounds)"]


@pytest.fixture(scope="module")
def base():
    """Per-video scores of rendered truth, each video's detail lowered by its own amount."""
    from dcm.config import Params

    world = Params().world.to_config()
    rows = [evaluate_video(render_video(p, 200 + i, world), p, world) for i, p in enumerate(all_prompts()[:48])]
    matrix = score_matrix(rows)
    matrix[:, 5] -= np.random.default_rng(0).uniform(0.0, 0.2, len(matrix))  # detail, see DIMENSIONS
    return world, matrix


def _worse(matrix: np.ndarray, by: float) -> np.ndarray:
    """Every video's quality dimensions lowered by ``by`` (a method that is worse on every video)."""
    out = matrix.copy()
    out[:, :6] -= by
    return np.clip(out, 0, 1)


def _rounds(seconds: float, n: int = 9, seed: int = 0) -> list[float]:
    return list(seconds * np.random.default_rng(seed).uniform(0.98, 1.02, n))


def _evidence(base, teacher=0.05, dcm4=0.06, pcm4=0.07, lcm4=0.08, dcm2=0.07, undistilled4=0.1, dcm_step=0.01,
              dcm_seconds=0.04):
    """A run where every claim holds clearly: each method's quality dimensions lowered by its argument
    on every video (0.01 moves a Total by about 0.014), each step count timed in 9 rounds."""
    world, matrix = base
    scores = {key: [_worse(matrix, by)] for key, by in
              {TEACHER: teacher, "dcm@4": dcm4, "pcm@4": pcm4, "lcm@4": lcm4, "dcm@2": dcm2,
               "undistilled@4": undistilled4}.items()}
    group = "teacher@50,lcm@4,dcm@4"
    latency = {TEACHER: {"rounds": _rounds(1.0, seed=1), "steps": 50, "forward_passes": 100, "timed_with": group},
               "lcm@4": {"rounds": _rounds(dcm_step * 4, seed=2), "steps": 4, "timed_with": group},
               "dcm@4": {"rounds": _rounds(dcm_seconds, seed=3), "steps": 4, "forward_passes": 4, "timed_with": group}}
    latency["lcm@4"]["rounds"] = list(np.asarray(latency["dcm@4"]["rounds"]) / (1 + dcm_step))
    return Evidence(scores, world, latency)


def test_every_claim_holds_on_figures_that_meet_it_clearly(base):
    rows = decide_claims(_evidence(base), TEACHER)
    assert [r[0] for r in rows] == CLAIMS
    assert [r[2] for r in rows] == ["yes"] * len(CLAIMS), rows


def test_each_claim_fails_on_its_own_figure(base):
    def failing(**kw):
        return [r[0] for r in decide_claims(_evidence(base, **kw), TEACHER) if r[2] == "**no**"]

    assert failing(pcm4=0.055) == [CLAIMS[0]]
    assert failing(teacher=0.04) == [CLAIMS[1]]
    assert failing(dcm2=0.1) == [CLAIMS[2]]
    assert failing(undistilled4=0.05) == [CLAIMS[3]]
    assert failing(dcm_seconds=0.06) == [CLAIMS[4]]
    assert failing(dcm_step=0.05) == [CLAIMS[5]]


def test_a_margin_smaller_than_its_interval_is_within_noise(base):
    """PCM a hair below DCM on average but not on every video: neither yes nor no."""
    world, matrix = base
    jitter = np.random.default_rng(5).normal(0, 0.03, matrix.shape[0])
    jitter -= jitter.mean()  # no gain on average, some on each video
    pcm = _worse(matrix, 0.05)
    pcm[:, 5] = np.clip(pcm[:, 5] + jitter, 0, 1)
    scores = {"dcm@4": [_worse(matrix, 0.05)], "pcm@4": [pcm], "lcm@4": [_worse(matrix, 0.2)]}
    rows = decide_claims(Evidence(scores, world), TEACHER)
    assert rows[0][0] == CLAIMS[0] and rows[0][2] == "within noise", rows


def test_claims_about_methods_not_sampled_are_skipped(base):
    world, matrix = base
    rows = decide_claims(Evidence({TEACHER: [matrix], "dcm@4": [_worse(matrix, 0.001)]}, world), TEACHER)
    assert [r[0] for r in rows] == [CLAIMS[1]]
    assert rows[0][2] == "yes"


def _log_evaluation(tmp_path, monkeypatch, params, name: str, scores: dict[str, np.ndarray] | None):
    """What one DVC experiment's evaluate stage leaves in MLflow: the per-video table as an artifact of
    its evaluate run and the headline Totals on its parent run; ``scores`` None: an experiment killed
    while it evaluated (its evaluate run failed with part of the headline logged)."""
    import mlflow
    import pandas as pd

    from dcm.evaluation.uncertainty import DIMENSIONS, totals
    from dcm.tracking import log_headline, stage_run

    monkeypatch.setenv("DVC_EXP_NAME", name)
    frames = []
    for key, matrix in (scores or {}).items():
        frame = pd.DataFrame(matrix, columns=list(DIMENSIONS))
        frame.insert(0, "key", key)
        frame.insert(1, "prompt", [f"p{i}" for i in range(len(frame))])
        frame.insert(2, "seed", range(len(frame)))
        frames.append(frame)
    if scores is None:
        with stage_run("evaluate", params):
            log_headline({"teacher@50/total": 0.9})
            mlflow.end_run("KILLED")
        return frames
    with stage_run("evaluate", params):
        pd.concat(frames).to_csv(tmp_path / "videos.csv", index=False)
        mlflow.log_artifact(str(tmp_path / "videos.csv"))
        log_headline({f"{key}/total": float(totals(m.mean(0))) for key, m in scores.items()})
    return frames


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_claims_over_seeds_read_each_seeds_per_video_table_from_mlflow(tracking, monkeypatch, base):
    """`dcm grid seeds` leaves one DVC experiment per seed; the report finds each one's newest finished
    evaluate run in MLflow and its per-video table, so the intervals cover seeds and videos."""
    import pandas as pd

    from dcm.config import Params
    from dcm.reporting.claims import per_video_scores
    from dcm.reporting.runs import mlflow_runs, per_video_tables
    from dcm.reporting.tables import newest_per_seed
    from dcm.tracking import config_tags

    world, matrix = base
    logged = {}
    for seed in (0, 1):
        params = Params().with_overrides({"distill": {"seed": seed}})
        logged[seed] = _log_evaluation(tracking, monkeypatch, params, f"seed-{seed}", {"dcm@4": _worse(matrix, 0.01 * seed)})[0]
    _log_evaluation(tracking, monkeypatch, params, "seed-1-killed", None)  # newer, but it never finished
    runs = newest_per_seed(mlflow_runs(params), config_tags(params)["dcm.config"])
    assert sorted(runs.seed) == [0, 1] and "seed-1-killed" not in set(runs.experiment)
    tables = per_video_tables(list(runs.run_id))
    by_seed = {int(s): t for s, t in zip(runs.seed, tables, strict=True)}
    for seed, frame in logged.items():
        pd.testing.assert_frame_equal(by_seed[seed][frame.columns], frame, check_dtype=False)
    assert [m.shape for m in per_video_scores(tables)["dcm@4"]] == [matrix.shape, matrix.shape]


def test_each_parts_effect_is_paired_over_the_seeds_and_videos_both_of_its_rows_have(tracking, monkeypatch, base):
    """Table 3 counts only runs of these params with each row's switches (never another boundary's),
    and the TC row of the effects table is full DCM minus OD+PE+GF on the same seeds and videos."""
    from dcm.config import Params
    from dcm.evaluation.uncertainty import DIMENSIONS, totals
    from dcm.reporting.ablations import ablation_section
    from dcm.reporting.runs import mlflow_runs

    world, matrix = base
    params = Params()
    no_tc = params.with_overrides({"ablation": {"tc": False}})
    for seed in (0, 1, 2):
        full = {"dcm@4": _worse(matrix, 0.005 * seed), "dcm@8": _worse(matrix, 0.005 * seed)}
        _log_evaluation(tracking, monkeypatch, params.with_overrides({"distill": {"seed": seed}}), f"s{seed}", full)
    for seed in (0, 1):  # TC off: worse by 0.02 on every video's quality dimensions at 4 steps, equal at 8
        ablated = {"dcm@4": _worse(matrix, 0.005 * seed + 0.02), "dcm@8": _worse(matrix, 0.005 * seed)}
        _log_evaluation(tracking, monkeypatch, no_tc.with_overrides({"distill": {"seed": seed}}), f"tc-off-s{seed}", ablated)
    other_boundary = no_tc.with_overrides({"boundary": params.boundary + 2})
    _log_evaluation(tracking, monkeypatch, other_boundary, "tc-off-b", {"dcm@4": matrix, "dcm@8": matrix})

    text = "\n".join(ablation_section(mlflow_runs(params), params, steps=(4, 8)))
    table3 = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| OD")}
    assert set(table3) == {"OD+PE+GF", "OD+PE+TC+GF"}
    assert "| 0, 1 | tc-off-s0, tc-off-s1 |" in table3["OD+PE+GF"] and "tc-off-b" not in text
    effects = [line for line in text.splitlines() if line.startswith("| TC |")]
    assert [row.split(" | ")[2:4] for row in effects] == [["4", "0, 1"], ["8", "0, 1"]]
    on = np.concatenate([_worse(matrix, 0.0), _worse(matrix, 0.005)])
    off = np.concatenate([_worse(matrix, 0.02), _worse(matrix, 0.025)])
    expected = totals(on.mean(0), world) - totals(off.mean(0), world)
    total, detail = effects[0].split(" | ")[4:6]
    assert total.startswith(f"{expected:+.4f} [+") and float(total.split("[")[1].split(",")[0]) > 0
    detail_gap = on[:, DIMENSIONS.index("detail")].mean() - off[:, DIMENSIONS.index("detail")].mean()
    assert detail.startswith(f"{detail_gap:+.4f}")
    assert effects[1].split(" | ")[4].startswith("+0.0000 [+0.0000, +0.0000]")  # the same videos: no effect
    assert not any(line.startswith("| GF |") for line in text.splitlines())  # no OD+PE+TC runs


def test_the_few_step_failure_table_sets_the_teachers_own_steps_against_its_full_schedule():
    from dcm.reporting.tables import few_step_failure_table

    def scores(detail, total):
        return {"detail": detail, "motion_smoothness": 0.9, "quality": 0.8, "total": total,
                "total_interval": [total - 0.01, total + 0.01]}

    metrics = {"teacher@50": scores(0.98, 0.90), "undistilled@8": scores(0.69, 0.85),
               "undistilled@4": scores(0.49, 0.80), "dcm@4": scores(0.9, 0.88)}
    lines = few_step_failure_table(metrics, "teacher@50").splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 4", "| 8", "| 50"]  # fewest steps first, no students
    assert "| 0.4900 | 0.500 |" in lines[2] and "0.8000 [0.7900, 0.8100]" in lines[2]
    assert few_step_failure_table({"teacher@50": scores(0.98, 0.9), "dcm@4": scores(0.9, 0.88)}, "teacher@50") is None


def test_the_methods_table_shows_each_methods_detail_and_motion_smoothness():
    """The two dimensions the experts are for, per method; a real backbone (no toy scores) shows dashes."""
    from dcm.reporting.tables import methods_table

    metrics = {"teacher@50": {"total": 0.9, "detail": 0.96, "motion_smoothness": 0.73},
               "dcm@4": {"total": 0.85, "detail": 0.81, "motion_smoothness": 0.69}, "lcm@4": {"total": 0.84}}
    header, _, teacher, dcm, lcm = methods_table(metrics, "teacher@50").splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in dcm.strip("|").split("|")]
    assert cells[columns.index("detail")] == "0.8100" and cells[columns.index("motion smoothness")] == "0.6900"
    lcm_cells = [c.strip() for c in lcm.strip("|").split("|")]
    assert lcm_cells[columns.index("detail")] == "–"


def test_the_sources_table_compares_full_dcm_from_each_training_source_with_its_teacher_calls():
    import pandas as pd

    from dcm.config import Params
    from dcm.distill.batches import teacher_calls
    from dcm.reporting.tables import sources_table

    def run(source, seed, total, od=True):
        return {"source": source, "seed": seed, "od": od, "pe": True, "tc": True, "gf": True, "boundary": 11,
                "dcm_4/total": total, "dcm_8/total": total + 0.01}

    params = Params()
    calls = teacher_calls(params, 1)
    # trajectories: every video solved on the whole grid before training; data: one guided teacher step
    # (guidance 1: one call) per training example of the two experts, during training
    steps = params.semantic.steps + params.detail.steps
    assert calls == {"trajectories": (params.trajectories.videos * params.flow.steps, 0),
                     "data": (0, steps * params.distill.batch_size)}
    assert params.trajectories.guidance_scale == 1.0 and calls["trajectories"][0] > 0 and calls["data"][1] > 0
    frame = pd.DataFrame([run("data", 0, 0.80), run("trajectories", 0, 0.85), run("trajectories", 1, 0.87),
                          run("data", 1, 0.84), run("data", 2, 0.5, od=False)])
    rows = sources_table(frame, calls, boundary=11).splitlines()[2:]
    assert rows[0].startswith("| trajectories | 0, 1 | 0.8600 ± 0.0141 (n=2) |")
    assert f"{calls['trajectories'][0]:,} + 0 online" in rows[0]
    assert rows[1].startswith("| data | 0, 1 | 0.8200 ± 0.0283 (n=2) |") and f"0 + {calls['data'][1]:,} online" in rows[1]
    assert sources_table(frame[frame.source == "data"], calls, boundary=11) is None
