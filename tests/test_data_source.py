"""`distill.source: data`: the dataset stage, training points noised from clean latents with the
teacher's guided step online as the target (the release's recipe), and students trained on them."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dcm.data.video_dataset import SUMMARY
from dcm.distill import objective
from dcm.distill.batches import Batch, DataSource, load_source, previous_point
from dcm.io import write_mp4
from dcm.layout import Layout
from dcm.models import load_backbone
from dcm.stages.dataset import UNUSED, run_dataset
from dcm.stages.distill import run_distill
from dcm.stages.sample import run_sample
from dcm.stages.validation import run_validation
from tiny_checkpoints import VIDEO_SHAPES, make_tiny_checkpoint

from conftest import MICRO_DISTILL, image_prompt_table, with_overrides

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = {"distill": {"source": "data"}, "dataset": {"videos": 6, "shard_size": 2, "batch_size": 2}}


def _folder(root, frames, height, width):
    """Three good clips, one file of random bytes and one too-short clip, in metadata.jsonl."""
    import numpy as np

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["a.mp4", "broken.mp4", "b.mp4", "short.mp4", "c.mp4"]
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write_mp4(root / name, rng.random((frames, height, width, 3)).astype("float32"))
    (root / "broken.mp4").write_bytes(rng.bytes(3000))
    write_mp4(root / "short.mp4", rng.random((frames - 1, height, width, 3)).astype("float32"))
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": f"a red circle {i}"}) + "\n"
                                                 for i, n in enumerate(names)))


def test_with_trajectories_the_dataset_stage_has_nothing_to_do(workspace, micro_distill):
    assert micro_distill.distill.source == "trajectories"
    assert run_dataset(micro_distill) is None
    assert [p.name for p in Layout().data.iterdir()] == [UNUSED]


def test_the_dataset_stage_encodes_a_folder_and_reports_every_video_it_skips(workspace, micro_distill, caplog):
    frames, size = micro_distill.world.frames, micro_distill.world.size
    _folder(workspace / "clips", frames, size, size)
    params = with_overrides(micro_distill, {**DATA, "dataset": {**DATA["dataset"], "path": str(workspace / "clips")}})
    summary = run_dataset(params)
    assert summary == {"videos": 5, "kept": 3, "skipped": {"too_short": 1, "unreadable": 1}}
    saved = json.loads((Layout().data / SUMMARY).read_text())
    assert [(f["file"], f["reason"]) for f in saved["skipped_files"]] == [("broken.mp4", "unreadable"),
                                                                        ("short.mp4", "too_short")]
    assert "broken.mp4" in caplog.text and "short.mp4" in caplog.text


def test_with_data_the_target_at_a_phase_start_is_the_teachers_guided_step_from_the_noised_latent(
        workspace, micro_distill):
    """By hand: x_i = (1 - s_i) x0 + s_i eps, captions dropped to the empty prompt, and
    x_{i-1} = x_i + (s_{i-1} - s_i) (v_u + w (v_c - v_u)); at the phase start that is the target."""
    params = with_overrides(micro_distill, {**DATA, "distill": {"source": "data", "caption_dropout": 0.5},
                                            "trajectories": {"guidance_scale": 3.0}})
    run_dataset(params)
    teacher = load_backbone(Layout().teacher_model)
    source = load_source(params, Layout(), teacher)
    assert isinstance(source, DataSource) and source.videos == 6
    empty = teacher.encode_prompts([""])
    batch = Batch(source, torch.tensor([3]), torch.tensor([2]), 6, torch.Generator().manual_seed(0), empty)
    x_prev = previous_point(source, batch, teacher, empty)
    target = objective.consistency_target(x_prev, batch.i, batch.end, source.sigmas, lambda x, s: 1e3 * x)

    gen = torch.Generator().manual_seed(0)
    videos = torch.randint(6, (6,), generator=gen)
    torch.randint(1, (6,), generator=gen)
    clean = source.data.latents[videos].float()
    noise = torch.randn(clean.shape, generator=gen)
    dropped = torch.rand(6, generator=gen) < 0.5
    assert 0 < int(dropped.sum()) < 6  # both kinds in the batch
    s_i, s_prev = source.sigmas[3], source.sigmas[2]
    x_i = (1 - s_i) * clean + s_i * noise
    text = source.data.prompt_embeds[videos].float()
    text[dropped] = empty[0]
    with torch.no_grad():
        v_c = teacher.velocity(teacher.transformer, x_i, s_i.expand(6), text)
        v_u = teacher.velocity(teacher.transformer, x_i, s_i.expand(6), empty.expand(6, -1, -1))
    expected = x_i + (s_prev - s_i) * (v_u + 3.0 * (v_c - v_u))
    torch.testing.assert_close(batch.x_i, x_i)
    torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)
    assert (target - x_i).abs().mean() > 1e-3  # the teacher moved it


def test_every_student_trains_on_the_toy_worlds_rendered_dataset_and_records_its_source(workspace, micro_distill):
    params = with_overrides(micro_distill, DATA)
    summary = run_dataset(params)  # no dataset.path on the toy world: its ground truth, rendered
    assert summary == {"videos": 6, "kept": 6, "skipped": {}}
    assert len(list((Layout().data / "videos").glob("*.mp4"))) == 6
    run_validation(params)
    for stage in ("semantic", "detail", "lcm", "pcm"):
        run_distill(params, stage)
        record = json.loads((Layout().student(stage) / "expert.json").read_text())
        assert list(record["inputs"])[0] == "data" and record["trained_with"]["distill.source"] == "data"
        assert not any(k.startswith("trajectories.videos") for k in record["trained_with"])
    assert not Layout().trajectories.exists()  # never needed
    latency = run_sample(params)  # sampling accepts the students of the data source
    assert "dcm@2" in latency


def test_shards_of_videos_rendered_again_for_another_world_are_encoded_again(workspace, micro_distill):
    """The toy renders follow the world params; a shard encoded from the old renders must not be kept."""
    from dcm.data.video_dataset import load as load_dataset, spec_from_params

    params = with_overrides(micro_distill, {**DATA, "world": {"textures": "periodic"}})
    run_dataset(params)
    teacher = load_backbone(Layout().teacher_model)
    before = load_dataset(Layout().data, spec_from_params(params, teacher)).latents
    other = with_overrides(params, {"world": {"textures": "random"}})
    run_dataset(other)
    after = load_dataset(Layout().data, spec_from_params(other, teacher)).latents
    assert (after.float() - before.float()).abs().mean() > 0.05


@pytest.mark.parametrize("kind", ["wan", "wan2.2-i2v"])
def test_a_tiny_random_wan_learns_from_a_video_folder_with_a_fidelity_curve(kind, tmp_path, monkeypatch):
    """Text to video, and image to video with each video's first frame as its image (the validation set
    from a prompt table with images)."""
    from dcm.config import parse_params
    from dcm.stages.teacher import run_teacher

    frames, height, width = VIDEO_SHAPES[kind]
    checkpoint = make_tiny_checkpoint(kind, tmp_path / "checkpoint")
    _folder(tmp_path / "clips", frames, height, width)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = parse_params({
        **MICRO_DISTILL, "model": {"backbone": "wan", "path": str(checkpoint), "frames": frames, "height": height,
                                   "width": width},
        "flow": {"steps": 4}, "boundary": 2, "semantic": {"steps": 4, "tc_lag": 1}, "sample": {"steps": [2]},
        "distill": {**MICRO_DISTILL["distill"], "source": "data", "validate_every": 2},
        "dataset": {"path": str(tmp_path / "clips"), "shard_size": 2, "dtype": "float32"},
        **({"trajectories": {"prompt_file": str(image_prompt_table(tmp_path, (width, height)))}}
           if kind == "wan2.2-i2v" else {})})
    run_teacher(params)
    assert run_dataset(params)["kept"] == 3
    if kind == "wan2.2-i2v":  # each video's conditioning holds its own first frame
        from dcm.data.video_frames import read_clip

        teacher = load_backbone(Layout().teacher_model)
        shard = load_file(str(sorted((tmp_path / "artifacts/data").glob("*.safetensors"))[0]))
        first = ((read_clip(tmp_path / "clips/a.mp4", frames, height, width)[:, 0].permute(1, 2, 0) + 1) * 127.5)
        want = teacher.condition_on_images(teacher.encode_prompts(["a red circle 0"]),
                                           [first.round().clamp(0, 255).to(torch.uint8).numpy()], frames)
        torch.testing.assert_close(shard["prompt_embeds"][:1], want, rtol=1e-5, atol=1e-5)
    run_validation(params)
    run_distill(params, "semantic")
    rows = pd.read_csv(Layout().student("semantic") / "validation.csv")
    assert list(rows["step"]) == [0, 2, 4] and "total" not in rows  # no toy evaluator on a real backbone
    for key in ("psnr", "ssim", "saturation_ratio", "frame_change_ratio", "frame_variance_ratio"):
        assert rows[key].notna().all(), key
