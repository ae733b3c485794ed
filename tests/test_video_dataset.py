"""Video datasets as training data: metadata layouts, frame choice and cropping, latent shards that
resume and are checked, bad videos reported and counted, and the toy world's rendered dataset."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from dcm.data.video_dataset import (SUMMARY, DatasetShardError, DatasetSpec, VideoDatasetError, VideoRecord,
                                    encode_dataset, load, read_metadata, render_toy_dataset, toy_dataset_items)
from dcm.data.video_frames import Skip, cover_and_crop, read_clip
from dcm.io import read_mp4, write_mp4
from dcm.models import build_tiny_backbone, load_backbone
from dcm.world.render import WorldConfig, render_video
from tiny_checkpoints import VIDEO_SHAPES, make_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES, SIZE = 8, 32


@pytest.fixture
def backbone(micro_params):
    """The micro tiny backbone: its VAE slot is the identity, so latents are the clips themselves."""
    return build_tiny_backbone(micro_params.model.tiny)


def _spec(backbone, fps=None) -> DatasetSpec:
    return DatasetSpec.for_backbone(backbone, FRAMES, SIZE, SIZE, fps=fps)


def _video(path: Path, frames: int = FRAMES, height: int = SIZE, width: int = SIZE, fps: int = 8,
           seed: int = 0) -> np.ndarray:
    """Random 8-bit frames written losslessly; returns them as ``(T, H, W, 3)`` in [0, 1]."""
    video = np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3)).astype(np.float32) / 255
    write_mp4(path, video, fps=fps)
    return video


def _as_clip(video: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(video).permute(3, 0, 1, 2) * 2 - 1


def _folder(root: Path) -> dict[str, np.ndarray]:
    """Four good videos, one file of random bytes and one too-short video, listed in metadata.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    good = {f"clips/good{i}.mp4": _video(root / f"clips/good{i}.mp4", seed=i) for i in range(4)}
    (root / "clips/broken.mp4").write_bytes(np.random.default_rng(9).bytes(4000))
    _video(root / "clips/short.mp4", frames=4, seed=5)
    names = ["clips/good0.mp4", "clips/broken.mp4", "clips/good1.mp4", "clips/short.mp4", "clips/good2.mp4",
             "clips/good3.mp4"]
    rows = [{"file_name": name, "text": f"a red circle number {i}"} for i, name in enumerate(names)]
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return good


def test_a_folder_is_encoded_and_unusable_videos_are_reported_and_counted(tmp_path, backbone, caplog):
    good = _folder(tmp_path / "data")
    records = read_metadata(tmp_path / "data")
    spec = _spec(backbone)
    with caplog.at_level(logging.WARNING, logger="dcm.data.video_dataset"):
        summary = encode_dataset(records, backbone, spec, tmp_path / "out", shard_size=2, batch_size=2)

    assert (summary.videos, summary.kept) == (6, 4)
    assert summary.skipped == {"too_short": 1, "unreadable": 1}
    assert [(f["file"], f["reason"]) for f in summary.skipped_files] == [("clips/broken.mp4", "unreadable"),
                                                                       ("clips/short.mp4", "too_short")]
    assert json.loads((tmp_path / "out" / SUMMARY).read_text())["skipped"] == summary.skipped
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "broken.mp4" in warnings[0] and "unreadable" in warnings[0]
    assert "short.mp4" in warnings[1] and "it has 4 frames, fewer than the 8 needed" in warnings[1]

    data = load(tmp_path / "out", spec)
    assert data.latents.shape == (4, 3, FRAMES, SIZE, SIZE) and data.latents.dtype == torch.float16
    assert data.prompts == ["a red circle number 0", "a red circle number 2", "a red circle number 4",
                            "a red circle number 5"]
    expected = torch.stack([_as_clip(good[f"clips/good{i}.mp4"]) for i in range(4)])
    torch.testing.assert_close(data.latents.float(), expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(data.prompt_embeds.float(), backbone.encode_prompts(data.prompts), atol=2e-3,
                               rtol=2e-3)


def test_csv_metadata_and_openvid_columns_give_the_same_records(tmp_path):
    (tmp_path / "metadata.csv").write_text('file_name,text\na.mp4,"a red circle, moving left"\nb.mp4,\n')
    records = read_metadata(tmp_path)
    assert records == [VideoRecord("a.mp4", "a red circle, moving left", tmp_path / "a.mp4"),
                       VideoRecord("b.mp4", "", tmp_path / "b.mp4")]

    openvid = tmp_path / "meta" / "OpenVid-1M.csv"
    openvid.parent.mkdir()
    openvid.write_text('video,caption,aesthetic score\na.mp4,"a red circle, moving left",5.1\nb.mp4,,4.0\n')
    mapped = read_metadata(openvid, columns={"file_name": "video", "text": "caption"}, videos_dir=tmp_path)
    assert mapped == records
    relative = read_metadata(openvid, columns={"file_name": "video", "text": "caption"})
    assert relative[0].path == openvid.parent / "a.mp4"  # relative to the metadata file's folder


@pytest.mark.parametrize("files, columns, message", [
    ({}, None, "holds no metadata.jsonl or metadata.csv"),
    ({"metadata.jsonl": ""}, None, "lists no videos"),
    ({"metadata.csv": "video,caption\na.mp4,a red circle\n"}, None,
     r"lacks the column\(s\) file_name, text; it has video, caption"),
    ({"metadata.csv": "video,caption\na.mp4,a red circle\n"}, {"file_name": "video", "text": "prompt"},
     r"lacks the column\(s\) prompt \(for text\); it has video, caption"),
    ({"metadata.csv": "file_name,text\n", "metadata.jsonl": "{}\n"}, None, "holds both"),
    ({"metadata.csv": "file_name,text\na.mp4,x\n"}, {"caption": "text"}, "allowed: file_name, text"),
    ({"metadata.jsonl": '{"file_name": "a.mp4", "text": "x"}\n["b.mp4", "y"]\n'}, None,
     "metadata.jsonl:2 is not a JSON object"),
])
def test_unusable_metadata_is_one_clear_error(tmp_path, files, columns, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(VideoDatasetError, match=message):
        read_metadata(tmp_path, columns=columns)


class _Process:
    """Stands in for accelerate's ``Accelerator`` as process ``index`` of ``count``; with ``stop``
    the process is killed at its first barrier, after writing its own shards."""

    def __init__(self, index: int, count: int, stop: bool = False):
        self.process_index, self.num_processes, self.stop = index, count, stop
        self.is_main_process = self.is_local_main_process = index == 0

    def wait_for_everyone(self) -> None:
        if self.stop:
            raise KeyboardInterrupt


def _counting(backbone) -> list[int]:
    """Count the videos ``backbone`` encodes."""
    calls, encode = [], backbone.encode_video
    backbone.encode_video = lambda pixels: (calls.append(len(pixels)), encode(pixels))[1]
    return calls


def test_each_process_writes_its_own_shards(tmp_path, backbone):
    _folder(tmp_path / "data")
    records, spec, out = read_metadata(tmp_path / "data"), _spec(backbone), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(records, backbone, spec, out, shard_size=2, accelerator=_Process(1, 2, stop=True))
    assert sorted(p.name for p in out.glob("shard-*.safetensors")) == ["shard-00001.safetensors"]
    calls = _counting(backbone)
    encode_dataset(records, backbone, spec, out, shard_size=2, accelerator=_Process(0, 2))
    assert sum(calls) == 3  # shards 0 and 2: good0, good2, good3 (process 1 did good1)
    assert len(load(out, spec).prompts) == 4


def test_a_killed_run_resumes_without_redoing_finished_shards(tmp_path, backbone):
    _folder(tmp_path / "data")
    records, spec, out = read_metadata(tmp_path / "data"), _spec(backbone), tmp_path / "out"
    encode = backbone.encode_video

    def killed_in_the_second_shard(pixels):
        if (out / "shard-00000.safetensors").exists():
            raise KeyboardInterrupt
        return encode(pixels)

    backbone.encode_video = killed_in_the_second_shard
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(records, backbone, spec, out, shard_size=2, batch_size=1)
    backbone.encode_video = encode
    first = (out / "shard-00000.safetensors").stat()
    assert not (out / "shard-00001.safetensors").exists() and not (out / "manifest.json").exists()

    calls = _counting(backbone)
    summary = encode_dataset(records, backbone, spec, out, shard_size=2, batch_size=1)
    assert sum(calls) == 3  # good1, good2, good3; good0 was in the finished shard
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first.st_mtime_ns
    assert summary.kept == 4 and summary.skipped == {"too_short": 1, "unreadable": 1}  # shard 0's skip kept
    assert len(load(out, spec).prompts) == 4


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1])), "sha256"),
    (lambda p: p.unlink(), "missing"),
])
def test_damaged_shards_are_clear_errors_naming_the_file(tmp_path, backbone, damage, message):
    _folder(tmp_path / "data")
    spec = _spec(backbone)
    encode_dataset(read_metadata(tmp_path / "data"), backbone, spec, tmp_path / "out", shard_size=2)
    damage(tmp_path / "out/shard-00001.safetensors")
    with pytest.raises(DatasetShardError, match=message) as err:
        load(tmp_path / "out", spec)
    assert "shard-00001.safetensors" in str(err.value)


def test_shards_made_with_other_settings_are_refused(tmp_path, backbone):
    _folder(tmp_path / "data")
    encode_dataset(read_metadata(tmp_path / "data"), backbone, _spec(backbone), tmp_path / "out", shard_size=2)
    with pytest.raises(DatasetShardError, match="fps None there, 4.0 now.*rerun the dataset stage"):
        load(tmp_path / "out", _spec(backbone, fps=4))
    with pytest.raises(DatasetShardError, match="manifest.json is missing"):
        load(tmp_path / "elsewhere", _spec(backbone))


def test_not_one_usable_video_is_an_error_after_the_summary(tmp_path, backbone):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    records = [VideoRecord("broken.mp4", "x", tmp_path / "broken.mp4"), VideoRecord("gone.mp4", "y", tmp_path / "g")]
    with pytest.raises(VideoDatasetError, match=r"not one of the 2 videos.*'missing': 1, 'unreadable': 1"):
        encode_dataset(records, backbone, _spec(backbone), tmp_path / "out")
    assert json.loads((tmp_path / "out" / SUMMARY).read_text())["kept"] == 0


def test_a_non_square_source_is_scaled_to_cover_then_centre_cropped(tmp_path):
    frame = torch.arange(64.0).repeat(3, 32, 1)  # (3, 32, 64): each pixel holds its column
    torch.testing.assert_close(cover_and_crop(frame, 32, 32), frame[:, :, 16:48])  # no scaling needed
    small = cover_and_crop(frame, 16, 16)  # half size: 16x32, then the middle 16 columns
    assert small.shape == (3, 16, 16)
    assert 15 < small[0, 0, 0] < 18 and 45 < small[0, 0, -1] < 48
    tall = cover_and_crop(torch.zeros(3, 48, 20), 16, 32)  # width decides: 48x20 -> 77x32 -> 16x32
    assert tall.shape == (3, 16, 32)

    video = _video(tmp_path / "wide.mp4", height=32, width=64)
    clip = read_clip(tmp_path / "wide.mp4", FRAMES, SIZE, SIZE)
    assert clip.shape == (3, FRAMES, SIZE, SIZE)
    torch.testing.assert_close(clip, _as_clip(video[:, :, 16:48]), atol=1e-5, rtol=0)


def test_frames_are_strided_to_the_asked_frame_rate(tmp_path):
    video = _video(tmp_path / "fast.mp4", frames=16, fps=16)
    clip = read_clip(tmp_path / "fast.mp4", 4, SIZE, SIZE, fps=8)
    torch.testing.assert_close(clip, _as_clip(video[[0, 2, 4, 6]]), atol=1e-5, rtol=0)
    first = read_clip(tmp_path / "fast.mp4", 4, SIZE, SIZE)  # no rate asked: the first frames
    torch.testing.assert_close(first, _as_clip(video[:4]), atol=1e-5, rtol=0)

    too_short = read_clip(tmp_path / "fast.mp4", 10, SIZE, SIZE, fps=8)  # needs source frames 0..18
    assert too_short == Skip("too_short", "it has 16 frames, fewer than the 19 that 10 frames at 8 fps need")
    _video(tmp_path / "slow.mp4", frames=16, fps=4)
    assert read_clip(tmp_path / "slow.mp4", 4, SIZE, SIZE, fps=8).reason == "low_fps"
    assert read_clip(tmp_path / "gone.mp4", 4, SIZE, SIZE).reason == "missing"


def test_the_toy_world_renders_a_dataset_that_decodes_to_its_ground_truth(tmp_path, backbone):
    world = WorldConfig()
    metadata = render_toy_dataset(tmp_path / "toy", world, videos=3, seed=1)
    rows = [json.loads(line) for line in metadata.read_text().splitlines()]
    items = toy_dataset_items(3, 1)
    assert [(r["text"], r["seed"]) for r in rows] == [(p.text, s) for p, s in items]
    assert all(2**30 <= s < 2**31 for _, s in items)  # the training split
    truth = [render_video(p, s, world) for p, s in items]
    for row, video in zip(rows, truth, strict=True):
        assert np.abs(read_mp4(tmp_path / "toy" / row["file_name"]) - video).max() <= 1 / 255 + 1e-6

    stamp = (tmp_path / "toy/video-00001.mp4").stat().st_mtime_ns
    (tmp_path / "toy/video-00002.mp4").unlink()  # as if killed before the last video
    render_toy_dataset(tmp_path / "toy", world, videos=3, seed=1)
    assert (tmp_path / "toy/video-00001.mp4").stat().st_mtime_ns == stamp
    assert (tmp_path / "toy/video-00002.mp4").exists()
    render_toy_dataset(tmp_path / "toy", WorldConfig(textures="random"), videos=2, seed=1)  # other settings: afresh
    assert sorted(p.name for p in (tmp_path / "toy").glob("*.mp4")) == ["video-00000.mp4", "video-00001.mp4"]
    assert (tmp_path / "toy/video-00001.mp4").stat().st_mtime_ns != stamp

    spec = _spec(backbone)
    encode_dataset(read_metadata(metadata), backbone, spec, tmp_path / "out", shard_size=2)
    data = load(tmp_path / "out", spec)
    expected = torch.stack([_as_clip(render_video(p, s, WorldConfig(textures="random"))) for p, s in items[:2]])
    torch.testing.assert_close(data.latents.float(), expected, atol=1 / 255 + 1e-3, rtol=0)


def test_a_tiny_random_wan_checkpoint_encodes_a_dataset(tmp_path):
    frames, height, width = VIDEO_SHAPES["wan"]
    wan = load_backbone(make_tiny_checkpoint("wan", tmp_path / "wan"), kind="wan")
    root = tmp_path / "data"
    videos = [_video(root / "a.mp4", frames=frames, height=height, width=2 * width, seed=1),
              _video(root / "b.mp4", frames=frames, height=height, width=width, seed=2)]
    (root / "metadata.jsonl").write_text('{"file_name": "a.mp4", "text": "a red circle"}\n'
                                         '{"file_name": "b.mp4", "text": "a blue square"}\n')
    spec = DatasetSpec.for_backbone(wan, frames, height, width, dtype="float32")
    encode_dataset(read_metadata(root), wan, spec, tmp_path / "out", shard_size=1)
    data = load(tmp_path / "out", spec)
    assert data.latents.shape == (2, *wan.latent_shape(frames, height, width)) == (2, 4, 2, 4, 4)
    assert data.prompt_embeds.shape == (2, *spec.text_shape)
    clips = torch.stack([_as_clip(videos[0][:, :, width // 2:width // 2 + width]), _as_clip(videos[1])])
    torch.testing.assert_close(data.latents, wan.encode_video(clips), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(data.prompt_embeds, wan.encode_prompts(data.prompts))
