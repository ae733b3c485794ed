"""Distillation stages: what each trains, exact resume after kill -9, NaN guard, two processes."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from dcm.distill.methods import StudentPlan
from dcm.io import load_checkpoint
from dcm.launch import LAUNCHED_MARKERS
from dcm.distill.probes import CollapseError
from dcm.layout import CHECKPOINT, HEALTHY_CHECKPOINT
from dcm.stages.distill import run_distill
from dcm.stages.trajectories import run_trajectories
from dcm.stages.validation import run_validation

from conftest import poison_loss_at, with_overrides

ROOT = Path(__file__).resolve().parents[1]
ART = Path("artifacts")


def prepare(params):
    """What DVC runs before a distillation stage: the trajectories and the validation set."""
    run_trajectories(params)
    run_validation(params)


def _weights(stage: str) -> dict[str, torch.Tensor]:
    if (ART / stage / "detail.safetensors").exists():
        return load_file(str(ART / stage / "detail.safetensors"))
    return load_file(str(next((ART / stage / "model").glob("*.safetensors"))))


def _write_params(params, path="params.yaml"):
    Path(path).write_text(yaml.safe_dump(json.loads(params.model_dump_json())))


def _record(stage: str) -> dict:
    return json.loads((ART / stage / "expert.json").read_text())


def test_every_stage_trains_its_student(workspace, micro_distill):
    prepare(micro_distill)
    infos = {stage: run_distill(micro_distill, stage) for stage in ("semantic", "detail", "lcm", "pcm")}
    records = {stage: _record(stage) for stage in infos}
    n = micro_distill.flow.steps
    k = micro_distill.boundary
    assert records["semantic"]["phases"] == [[n, k]] and infos["semantic"]["tc"]
    assert records["detail"]["phases"] == [[k, 0]] and infos["detail"]["gf"] and records["detail"]["kind"] == "pe"
    assert records["lcm"]["phases"] == [[n, 0]]
    assert len(records["pcm"]["phases"]) == micro_distill.pcm.phases
    assert all(r["boundary"] == k and r["trained_with"]["boundary"] == k for s, r in records.items() if s != "lcm"
               and s != "pcm")
    assert infos["detail"]["trainable_parameters"] < infos["detail"]["teacher_parameters"]
    teacher = load_file(str(next(Path("artifacts/teacher/model/transformer").glob("*.safetensors"))))
    for stage in ("semantic", "lcm", "pcm"):  # every full student moved away from the teacher it started from
        student = _weights(stage)
        assert max((student[name] - value).abs().max().item() for name, value in teacher.items()) > 1e-5, stage
    assert any(v.abs().max() > 0 for name, v in _weights("detail").items() if "lora_B" in name)
    for stage in infos:  # every student's validation curve: where it started and where it ended
        curve = pd.read_csv(ART / stage / "validation.csv")
        assert list(curve.step) == [0, 3 if stage in ("semantic", "detail") else 2], stage
        assert curve.total.between(0, 1).all()
    runs = mlflow.search_runs(experiment_names=["dcm"])
    detail = runs[runs["tags.dcm.stage"] == "detail"].iloc[0]  # parent runs have no stage tag
    for metric in ("loss_consistency", "loss_g", "loss_d", "loss_fm", "grad_norm"):
        assert f"metrics.{metric}" in runs.columns and detail[f"metrics.{metric}"] == detail[f"metrics.{metric}"]
    semantic = runs[runs["tags.dcm.stage"] == "semantic"].iloc[0]
    assert semantic["metrics.loss_tc"] >= 0 and semantic["tags.ablation.tc"] == "True"


def test_training_lowers_the_consistency_loss_on_a_fixed_batch(workspace, micro_distill):
    """The probe batch of the bucket figure is the same draw at every probe: its loss falls."""
    params = with_overrides(micro_distill, {"lcm": {"steps": 30, "lr": 1e-3}, "distill": {"bucket_every": 30}})
    prepare(params)
    run_distill(params, "lcm")
    rows = pd.read_csv(ART / "lcm" / "buckets.csv")
    before, after = rows[rows.step == 1].loss.mean(), rows[rows.step == 30].loss.mean()
    print(f"fixed-batch loss {before:.4g} -> {after:.4g}")
    assert after < 0.8 * before, (before, after)


def test_detail_training_is_reproducible_whatever_was_drawn_before(workspace, micro_distill):
    """The LoRA and the discriminator start from the params' seed, not from the global generator."""
    prepare(micro_distill)
    run_distill(micro_distill, "semantic")
    run_distill(micro_distill, "detail")
    (ART / "detail").rename(ART / "first")
    torch.rand(1000)  # whatever a library draws in between
    run_distill(micro_distill, "detail")
    first, second = (load_file(str(ART / run / "detail.safetensors")) for run in ("first", "detail"))
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, rtol=0, atol=0, msg=name)


def test_od_and_gf_switches_change_what_trains(workspace, micro_distill):
    prepare(micro_distill)
    od_only = with_overrides(micro_distill, {"ablation": {"od": True, "pe": False, "tc": False, "gf": False}})
    run_distill(od_only, "semantic")
    info = run_distill(od_only, "detail")
    assert _record("detail")["kind"] == "full" and not info["gf"]
    assert (ART / "detail" / "model" / "config.json").exists()

    none = with_overrides(micro_distill, {"ablation": {"od": False, "pe": False, "tc": False, "gf": False}})
    assert StudentPlan.for_stage("detail", none) is None
    run_distill(none, "semantic")
    n, k = micro_distill.flow.steps, micro_distill.boundary
    assert _record("semantic")["role"] == "vanilla" and _record("semantic")["phases"] == [[n, k], [k, 0]]
    run_distill(none, "detail")
    assert _record("detail")["kind"] == "none"
    rows = (ART / "semantic" / "buckets.csv").read_text().splitlines()
    assert rows[0] == "step,bucket,sigma_low,sigma_high,loss,grad_norm" and len(rows) > 2


def test_the_g_weight_ramps_up_and_adapts_to_the_consistency_gradient(workspace, micro_distill):
    params = with_overrides(micro_distill, {"detail": {"g_weighting": "adaptive", "g_warmup_steps": 2}})
    prepare(params)
    run_distill(params, "semantic")
    run_distill(params, "detail")
    runs = mlflow.search_runs(experiment_names=["dcm"])
    detail = runs[runs["tags.dcm.stage"] == "detail"].iloc[0]
    history = [m.value for m in sorted(mlflow.MlflowClient().get_metric_history(detail.run_id, "g_scale"),
                                       key=lambda m: m.step)]
    assert len(history) == 3 and history[0] == 0.0  # step 0 of a 2-step ramp
    assert history[1] > 0 and history[2] > 0 and history[1] != 0.5 * params.detail.g_weight  # not the fixed weight


def test_kill_9_then_rerun_ends_with_the_same_weights(workspace, micro_distill):
    """The pipeline's EMA target (params.yaml's distill.target) is resumed from the checkpoint with the student."""
    params = with_overrides(micro_distill, {"semantic": {"steps": 40}, "distill": {"checkpoint_every": 5}})
    assert params.distill.target == "ema"
    prepare(params)
    run_distill(params, "semantic")
    (ART / "semantic").rename(ART / "straight")
    straight = load_file(str(next((ART / "straight" / "model").glob("*.safetensors"))))

    _write_params(params)
    cmd = [sys.executable, "-m", "dcm.cli", "semantic"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = ART / "semantic" / CHECKPOINT
    deadline = time.time() + 300
    # the first checkpoint past step 0 (the step-0 validation keeps one of the untrained student)
    while (not ckpt.exists() or load_checkpoint(ckpt)["step"] == 0) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed = load_checkpoint(ckpt)
    killed_at = killed["step"]
    assert 0 < killed_at < 40 and killed["ema"]
    assert not (ART / "semantic" / "model").exists()

    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = _weights("semantic")
    # the training clock is carried through the checkpoint: the figure covers the whole run
    assert _record("semantic")["summary"]["seconds_per_step"] > 0
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, msg=name)


def test_a_stopped_detail_stage_resumes_its_discriminator_and_ema_target_exactly(workspace, micro_distill, monkeypatch,
                                                                                 caplog):
    """What the detail expert trains beside the student (the discriminator and its optimizer) and the EMA
    target come back from the checkpoint: a run stopped after its step-2 checkpoint and rerun ends with
    the weights of an uninterrupted run."""
    params = with_overrides(micro_distill, {"distill": {"target": "ema"}, "detail": {"steps": 4}})
    prepare(params)
    run_distill(params, "semantic")
    run_distill(params, "detail")
    (ART / "detail").rename(ART / "straight")
    restore = poison_loss_at(monkeypatch, 3)  # the third step's loss: the stage stops after its step-2 checkpoint
    with pytest.raises(CollapseError, match="step 2: non-finite loss"):
        run_distill(params, "detail")
    restore()
    with caplog.at_level(logging.INFO, logger="dcm.distill.trainer"):
        run_distill(params, "detail")
    assert "resuming from artifacts/detail/checkpoint.safetensors at step 2" in caplog.text
    straight, resumed = (load_file(str(ART / run / "detail.safetensors")) for run in ("straight", "detail"))
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(workspace, micro_distill, monkeypatch):
    prepare(micro_distill)
    params = with_overrides(micro_distill, {"semantic": {"steps": 6}})
    poison_loss_at(monkeypatch, 4)
    with pytest.raises(CollapseError, match="step 3: non-finite loss"):
        run_distill(params, "semantic")
    ckpt = load_checkpoint(ART / "semantic" / CHECKPOINT)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values())


def test_a_collapsed_student_stops_the_stage_and_its_last_healthy_checkpoint_is_kept(workspace, micro_distill,
                                                                                    monkeypatch):
    """Output collapsed to one colour (LCM's output layer zeroed after step 3) fails the next validation:
    the stage stops naming the check, the step and the healthy checkpoint of the validation before."""
    from dcm.distill.trainer import DistillRun

    params = with_overrides(micro_distill, {"lcm": {"steps": 8}, "distill": {"validate_every": 2}})
    prepare(params)
    train_step = DistillRun.train_step

    def collapsing(self):
        train_step(self)
        if self.step == 3:
            with torch.no_grad():
                for name, p in self.student.raw.named_parameters():
                    if name.startswith("proj_out"):
                        p.zero_()

    monkeypatch.setattr(DistillRun, "train_step", collapsing)
    with pytest.raises(CollapseError, match=r"lcm collapsed at step 4: per-frame variance 0\.0+ of the teacher's.*"
                                            r"last healthy checkpoint \(step 2\) is kept at "
                                            r"artifacts/lcm/healthy-checkpoint\.safetensors"):
        run_distill(params, "lcm")
    healthy = load_checkpoint(ART / "lcm" / HEALTHY_CHECKPOINT)
    assert healthy["step"] == 2 and [row["step"] for row in healthy["validation"]] == [0, 2]
    assert any(float(v.abs().sum()) > 0 for k, v in healthy["student"].items() if k.startswith("proj_out"))
    rows = pd.read_csv(ART / "lcm" / "validation.csv")
    assert list(rows["step"]) == [0, 2, 4] and rows["frame_variance_ratio"].iloc[-1] < 0.01
    assert rows["frame_variance_ratio"].iloc[:2].min() > params.distill.collapse_variance_ratio


def test_the_validation_curve_compares_each_student_with_the_teacher(workspace, micro_distill):
    """Every check logs PSNR and SSIM against the teacher's samples from the same noise and the statistics
    that show collapse; on the toy world also its scores."""
    # a learning rate that moves the micro student visibly off the teacher (the guard's PSNR check off)
    params = with_overrides(micro_distill, {"lcm": {"steps": 4, "lr": 0.01},
                                            "distill": {"validate_every": 2, "collapse_psnr_drop": 0.0}})
    prepare(params)
    run_distill(params, "lcm")
    rows = pd.read_csv(ART / "lcm" / "validation.csv")
    assert list(rows["step"]) == [0, 2, 4]
    for key in ("psnr", "ssim", "saturation_ratio", "frame_change_ratio", "frame_variance_ratio", "total"):
        assert rows[key].notna().all(), key
    assert (rows["psnr"] > 10).all() and (rows["psnr"] <= 40).all() and (rows["ssim"] > 0).all()
    assert rows["psnr"].nunique() > 1  # the student moves off the teacher


def test_two_cpu_processes_through_the_launch_params(workspace, micro_distill):
    """`launch.num_processes: 2` makes the stage scripts re-launch themselves in two processes."""
    params = with_overrides(micro_distill, {"trajectories": {"videos": 4, "shard_size": 1},
                                            "launch": {"num_processes": 2,
                                                       "config_file": str(ROOT / "configs/accelerate/cpu_2proc.yaml")}})
    _write_params(params)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")}
    logs = {}
    for stage in ("trajectories", "validation", "distill"):
        script = [sys.executable, str(ROOT / "stages" / f"{stage}.py"), *(["semantic"] if stage == "distill" else [])]
        result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        logs[stage] = result.stderr
    assert "process 0 of 2 writes shards [0, 2]" in logs["trajectories"]
    assert "process 1 of 2 writes shards [1, 3]" in logs["trajectories"]
    manifest = json.loads((ART / "trajectories" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 4
    assert (ART / "semantic" / "model" / "config.json").exists()
    runs = mlflow.search_runs(experiment_names=["dcm"])
    stages = runs[runs["tags.dcm.parent"] != "true"]
    assert sorted(stages["tags.dcm.stage"]) == ["semantic", "trajectories", "validation"]  # one run each: main process only


def _torchrun_harness(stage: str, mode: str, keep_as: str | None = None) -> None:
    """Train ``stage`` into artifacts/<stage> in two processes, then rename the folder ``keep_as``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHED_MARKERS}
    env.update(PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "fsdp_on_cpu.py"), stage, mode]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    if keep_as:
        (ART / stage).rename(ART / keep_as)


def test_fsdp_trains_what_data_parallelism_trains_and_resumes_from_its_shards(workspace, micro_distill):
    """accelerate's FSDP path (full shard, one unit per transformer block; tests/fsdp_on_cpu.py forces it
    on CPU) ends with the weights two data-parallel processes end with: the full semantic expert, then
    the PE detail expert with GAN + FM. A run continued from FSDP's per-rank checkpoint ends the same.
    With the online target: the EMA target does not run under FSDP yet (the next test)."""
    micro_distill = with_overrides(micro_distill, {"distill": {"target": "online"}})
    prepare(micro_distill)
    _write_params(micro_distill)
    for mode in ("ddp", "fsdp"):
        _torchrun_harness("semantic", mode, keep_as=f"semantic_{mode}")
    assert {p.name for p in (ART / "semantic_fsdp").glob("optimizer-rank*")} == {"optimizer-rank0.safetensors",
                                                                                 "optimizer-rank1.safetensors"}
    ddp, fsdp = (load_file(str(ART / f"semantic_{m}" / "model" / "diffusion_pytorch_model.safetensors"))
                 for m in ("ddp", "fsdp"))
    assert ddp.keys() == fsdp.keys()
    for name, value in ddp.items():
        torch.testing.assert_close(fsdp[name], value, atol=1e-6, rtol=1e-5, msg=name)

    shutil.copytree(ART / "semantic_fsdp", ART / "semantic")
    _torchrun_harness("detail", "ddp", keep_as="detail_ddp")
    _write_params(with_overrides(micro_distill, {"detail": {"steps": 2}}))
    _torchrun_harness("detail", "fsdp")  # stops at its step-2 checkpoint
    assert (ART / "detail" / "optimizer-rank1.safetensors").exists()
    _write_params(micro_distill)
    _torchrun_harness("detail", "fsdp", keep_as="detail_fsdp")  # continues from the shards to step 3
    ddp, fsdp = (load_file(str(ART / f"detail_{m}" / "detail.safetensors")) for m in ("ddp", "fsdp"))
    assert any(".lora_A." in name for name in ddp) and fsdp.keys() == ddp.keys()
    for name, value in ddp.items():
        torch.testing.assert_close(fsdp[name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_fsdp_trains_the_ema_target_of_params_yaml(workspace, micro_distill):
    """params.yaml's distill.target (ema) under FSDP, as `launch.config_file: configs/accelerate/fsdp.yaml`
    runs it: each process moves its shards of the EMA, and the gathered EMA is data parallelism's."""
    assert micro_distill.distill.target == "ema"
    prepare(micro_distill)
    _write_params(with_overrides(micro_distill, {"semantic": {"steps": 3}}))
    _torchrun_harness("semantic", "fsdp", keep_as="semantic_fsdp")
    _torchrun_harness("semantic", "ddp", keep_as="semantic_ddp")
    fsdp, ddp = (load_checkpoint(ART / f"semantic_{mode}" / CHECKPOINT)["ema"] for mode in ("fsdp", "ddp"))
    teacher = load_file(str(next((ART / "teacher" / "model" / "transformer").glob("*.safetensors"))))
    assert fsdp.keys() == ddp.keys() == teacher.keys()
    for name, value in ddp.items():
        torch.testing.assert_close(fsdp[name], value, atol=1e-6, rtol=1e-5, msg=name)
    assert any(not torch.equal(ddp[name], teacher[name]) for name in teacher)  # the EMA moved off the teacher


def test_bf16_autocast_keeps_fp32_master_weights_and_checkpointing_changes_no_result(workspace, micro_distill):
    """`distill.mixed_precision: bf16` computes in bf16 (the weights move differently) but keeps and
    saves fp32 weights; `distill.gradient_checkpointing` recomputes activations and learns the same."""
    prepare(micro_distill)
    runs = {"fp32": {}, "bf16": {"mixed_precision": "bf16"}, "checkpointed": {"gradient_checkpointing": True}}
    weights = {}
    for name, distill_overrides in runs.items():  # one process each: accelerate fixes its precision once
        _write_params(with_overrides(micro_distill, {"distill": distill_overrides}))
        subprocess.run([sys.executable, "-m", "dcm.cli", "semantic"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        (ART / "semantic").rename(ART / f"semantic_{name}")
        weights[name] = load_file(str(ART / f"semantic_{name}" / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float32 for w in weights.values() for v in w.values())
    runs = mlflow.search_runs(experiment_names=["dcm"], order_by=["start_time ASC"])
    losses = runs[runs["tags.dcm.stage"] == "semantic"]["metrics.loss_consistency"].tolist()
    assert len(losses) == 3
    assert losses[1] != losses[0]  # bf16 arithmetic: the same batches give another loss
    assert losses[2] == pytest.approx(losses[0], rel=1e-4)
    for name, value in weights["fp32"].items():
        torch.testing.assert_close(weights["checkpointed"][name], value, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("row, tripped", [
    ({"finite": 1, "psnr": 27.0, "frame_variance_ratio": 0.9, "frame_change_ratio": 1.1}, None),
    ({"finite": 0, "psnr": 27.0, "frame_variance_ratio": 0.9, "frame_change_ratio": 1.1}, "non-finite"),
    ({"finite": 1, "psnr": 27.0, "frame_variance_ratio": 0.1, "frame_change_ratio": 1.1}, "solid-colour"),
    ({"finite": 1, "psnr": 27.0, "frame_variance_ratio": 0.9, "frame_change_ratio": 0.1}, "static"),
    ({"finite": 1, "psnr": 14.0, "frame_variance_ratio": 0.9, "frame_change_ratio": 2.8}, "below its best so far"),
])
def test_the_collapse_guard_reads_the_newest_check_against_the_teacher_and_the_best_so_far(tmp_path, row, tripped):
    """The thresholds of params.yaml; the PSNR reference is the best check so far, the untrained student's
    (step 0) included: a student that falls far below where it started has collapsed."""
    from dcm.config import load_params
    from dcm.distill.probes import ValidationCurve

    curve = ValidationCurve(load_params(ROOT / "params.yaml"), None, None, None, None, tmp_path, None)
    curve.rows = [{"step": 0, "finite": 1, "psnr": 26.3, "frame_variance_ratio": 0.88, "frame_change_ratio": 1.3},
                  {"step": 25, **row}]
    found = curve.collapse()
    assert (found is None) if tripped is None else (tripped in found)
