"""Teacher training: checkpoints, exact resume, NaN guard, loadable model."""

from pathlib import Path

import pytest
import torch

from dcm.teacher import training as teacher_mod
from dcm.models import load_backbone
from dcm.models.tiny import build_tiny_backbone
from dcm.data.splits import HELDOUT_SEED_BASE, TRAIN_SEED_END, VALIDATION_SEED_BASE, toy_items
from dcm.io import CheckpointError, load_checkpoint
from dcm.layout import CHECKPOINT
from dcm.teacher.probes import ACCURACY_KEYS, denoising_accuracy
from dcm.teacher.training import train_teacher
from conftest import with_overrides


@pytest.fixture(autouse=True)
def _tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def _weights(path):
    return load_backbone(path).transformer.state_dict()


def test_resume_after_a_crash_ends_with_the_same_weights(tmp_path, micro_params, monkeypatch):
    train_teacher(micro_params, tmp_path / "straight")

    real_batch = teacher_mod.training_batch

    def crash_at_step_4(params, table, step):
        if step == 4:
            raise KeyboardInterrupt("killed")
        return real_batch(params, table, step)

    monkeypatch.setattr(teacher_mod, "training_batch", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(micro_params, tmp_path / "resumed")
    assert (tmp_path / "resumed" / CHECKPOINT).exists()  # written at step 3
    assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT)["state"]["step"] == 3
    monkeypatch.setattr(teacher_mod, "training_batch", real_batch)
    train_teacher(micro_params, tmp_path / "resumed")

    straight, resumed = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "resumed" / "model")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], msg=name)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, micro_params, monkeypatch):
    real_batch = teacher_mod.training_batch

    def poisoned(params, table, step):
        x0, text, noise, sigma = real_batch(params, table, step)
        return (x0 * float("nan") if step == 4 else x0), text, noise, sigma

    monkeypatch.setattr(teacher_mod, "training_batch", poisoned)
    with pytest.raises(FloatingPointError, match="step 4"):
        train_teacher(micro_params, tmp_path / "t")
    ckpt = load_checkpoint(tmp_path / "t" / CHECKPOINT)
    assert ckpt["state"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


class _RunsCode:
    """Unpickling this touches ``marker``: what a checkpoint from a shared remote or a clone could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_checkpoint_is_never_unpickled(tmp_path, micro_params):
    marker = tmp_path / "code ran"
    (tmp_path / "t").mkdir()
    torch.save({"state": {"step": 1}, "payload": _RunsCode(marker)}, tmp_path / "t" / CHECKPOINT)
    with pytest.raises(CheckpointError, match="is not a safetensors checkpoint"):
        train_teacher(micro_params, tmp_path / "t")
    assert not marker.exists()


def test_an_old_pickle_checkpoint_stops_the_run_with_how_to_convert_it_and_converted_it_resumes(
        tmp_path, micro_params, steps_taken):
    train_teacher(micro_params, tmp_path / "t")
    state = load_checkpoint(tmp_path / "t" / CHECKPOINT)
    torch.save(state, tmp_path / "t" / "checkpoint.pt")  # as dcm wrote it before
    (tmp_path / "t" / CHECKPOINT).unlink()
    steps_taken.clear()
    with pytest.raises(CheckpointError, match="checkpoint.pt is a checkpoint in the old pickle format") as refused:
        train_teacher(micro_params, tmp_path / "t")
    assert steps_taken == []  # not retrained from scratch
    exec(str(refused.value).split('python -c "')[1].split('"')[0])
    train_teacher(micro_params, tmp_path / "t")
    assert steps_taken == []  # the finished run is seen as finished


def test_heldout_and_validation_seeds_are_never_training_seeds_nor_each_other():
    heldout, validation = toy_items("heldout", 64), toy_items("validation", 64)
    assert len({p.text for p, _ in heldout}) == 64
    assert all(TRAIN_SEED_END <= HELDOUT_SEED_BASE <= seed < VALIDATION_SEED_BASE for _, seed in heldout)
    assert all(seed >= VALIDATION_SEED_BASE for _, seed in validation)


def test_missing_model_names_the_files_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone.json"):
        load_backbone(tmp_path / "nowhere")


@pytest.fixture
def steps_taken(monkeypatch):
    """The training steps the teacher takes from here on (the step of every batch it draws)."""
    real_batch, taken = teacher_mod.training_batch, []

    def counting(params, table, step):
        taken.append(step)
        return real_batch(params, table, step)

    monkeypatch.setattr(teacher_mod, "training_batch", counting)
    return taken


def test_a_restart_at_the_last_step_continues_a_finished_run_exactly_as_a_run_from_scratch(tmp_path, micro_params,
                                                                                           steps_taken):
    train_teacher(micro_params, tmp_path / "t")
    steps_taken.clear()
    continued = micro_params.with_overrides({"teacher": {"steps": 8, "restarts": [6], "restart_lr_ratio": 0.5}})
    train_teacher(continued, tmp_path / "t")
    assert steps_taken == [6, 7]
    steps_taken.clear()
    train_teacher(continued, tmp_path / "scratch")
    assert steps_taken == list(range(8))
    scratch, resumed = _weights(tmp_path / "scratch" / "model"), _weights(tmp_path / "t" / "model")
    for name in scratch:
        torch.testing.assert_close(resumed[name], scratch[name], msg=name)


def test_a_checkpoint_trained_with_another_schedule_or_other_params_is_not_resumed(tmp_path, micro_params, steps_taken):
    train_teacher(micro_params, tmp_path / "t")
    steps_taken.clear()
    train_teacher(micro_params.with_overrides({"teacher": {"steps": 8}}), tmp_path / "t")  # stretches the past cosine
    assert steps_taken == list(range(8))
    steps_taken.clear()
    train_teacher(micro_params.with_overrides({"teacher": {"steps": 8, "lr": 5e-4}}), tmp_path / "t")
    assert steps_taken == list(range(8))


def test_the_sampling_grid_shift_is_part_of_the_checkpoint_only_when_training_draws_from_it(tmp_path, micro_params,
                                                                                              steps_taken):
    own_shift = micro_params.with_overrides({"teacher": {"train_shift": 1.0}})
    train_teacher(own_shift, tmp_path / "own")
    steps_taken.clear()
    longer = {"flow": {"shift": 3.0}, "teacher": {"steps": 8, "restarts": [6]}}  # another grid shift
    train_teacher(own_shift.with_overrides(longer), tmp_path / "own")
    assert steps_taken == [6, 7]  # continued: the grid's shift never reached a training step
    shared = micro_params.with_overrides({"teacher": {"train_shift": None}})
    train_teacher(shared, tmp_path / "shared")
    steps_taken.clear()
    train_teacher(shared.with_overrides(longer), tmp_path / "shared")
    assert steps_taken == list(range(8))  # the training noise levels followed the grid's shift: start over


def test_each_cosine_segment_starts_at_its_peak_and_ends_at_the_floor(micro_params):
    params = micro_params.with_overrides({"teacher": {"steps": 20, "warmup_steps": 2, "restarts": [10],
                                                      "restart_lr_ratio": 0.5, "min_lr_ratio": 0.1}})
    lr = teacher_mod.lr_lambda(params)
    assert [lr(0), lr(1), lr(2)] == [0.5, 1.0, 1.0]
    assert lr(9) > 0.1 and lr(10) == 0.5 and lr(19) > 0.1
    assert lr(20) == pytest.approx(0.1)
    first_segment_alone = teacher_mod.lr_lambda(params.with_overrides({"teacher": {"steps": 10, "restarts": []}}))
    assert [lr(k) for k in range(10)] == [first_segment_alone(k) for k in range(10)]


def test_denoising_probe_reads_attributes_from_lightly_noised_videos_only(micro_params):
    backbone = build_tiny_backbone(micro_params.model.tiny)  # adaLN-Zero: velocity 0, so x0 = x_sigma
    rows = denoising_accuracy(backbone, backbone.transformer, toy_items("heldout", 8), micro_params, [1e-4, 1.0],
                              guidance_scale=3.0, batch_size=3)
    assert [r["sigma"] for r in rows] == [1e-4, 1.0]
    clean, noise = ([r[f"acc_{k}"] for k in ACCURACY_KEYS] for r in rows)
    assert min(clean) >= 0.75  # the ground truth itself
    assert sum(noise) / len(noise) <= 0.5  # pure noise


def test_pure_noise_share_puts_that_share_of_each_batch_at_sigma_one(micro_params):
    params = with_overrides(micro_params, {"teacher": {"batch_size": 8, "pure_noise_share": 0.25}})
    table = teacher_mod.PromptTable(build_tiny_backbone(params.model.tiny, seed=0))
    for step in range(3):
        sigma = teacher_mod.training_batch(params, table, step)[3]
        assert (sigma == 1.0).sum() == 2
    plain = with_overrides(params, {"teacher": {"pure_noise_share": 0.0}})
    assert (teacher_mod.training_batch(plain, table, 0)[3] < 1.0).all()


def test_the_sample_loss_is_the_velocity_loss_weighted_by_sigma_squared():
    gen = torch.Generator().manual_seed(0)
    x0, noise, velocity = (torch.randn(1, 3, 2, 4, 4, generator=gen) for _ in range(3))
    sigma = torch.tensor([0.5])
    x_t = (1 - sigma) * x0 + sigma * noise
    v_loss = teacher_mod.teacher_loss(velocity, x_t, x0, noise, sigma, "velocity")
    x0_loss = teacher_mod.teacher_loss(velocity, x_t, x0, noise, sigma, "sample")
    assert v_loss > 0
    assert torch.allclose(x0_loss, 0.25 * v_loss)


def test_the_committed_teacher_is_the_default_recipe_with_a_token_per_frame_and_follows_its_prompts():
    """The teacher `dvc repro` starts from: params.yaml's architecture (one frame per token; the tests'
    micro models use tokens of two frames to stay fast), and 8-step samples of validation prompts
    show the prompt's colour and direction."""
    from conftest import PRODUCTION
    from dcm.evaluation.samples import score_samples
    from dcm.teacher.probes import sample_videos

    backbone = load_backbone(Path(__file__).resolve().parents[1] / "artifacts" / "teacher" / "model")
    assert tuple(backbone.transformer.config.patch_size) == PRODUCTION.model.tiny.patch_size == (1, 4, 4)
    items = toy_items("validation", 8)
    videos = sample_videos(backbone, backbone.transformer, items, PRODUCTION, 8,
                           PRODUCTION.teacher_eval.guidance_scale)
    scores = score_samples(videos, items, PRODUCTION.world.to_config()).aggregate
    assert scores["color"] == 1.0 and scores["motion_direction"] == 1.0, scores
