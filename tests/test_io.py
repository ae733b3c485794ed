"""Files: H.264 round trip, the sample-directory contract, atomic writes."""

import json

import av
import numpy as np
import pytest

from dcm.errors import SampleFolderError
from dcm.io import atomic_path, read_manifest, read_mp4, write_manifest, write_mp4
from dcm.world import render_video


def test_mp4_is_h264_and_keeps_the_video(tmp_path, world):
    video = render_video("a yellow triangle moving down on a checker background", 2, world)
    write_mp4(tmp_path / "v.mp4", video)
    with av.open(str(tmp_path / "v.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    back = read_mp4(tmp_path / "v.mp4")
    assert back.shape == video.shape
    assert np.abs(back - video).max() <= 1 / 255 + 1e-6  # only 8-bit quantisation


def test_manifest_round_trip_and_checks(tmp_path, world):
    write_mp4(tmp_path / "0.mp4", render_video("a red circle moving left on a stripes background", 0, world))
    record = {"file": "0.mp4", "prompt": "a red circle moving left on a stripes background", "seed": 0,
              "method": "teacher", "steps": 50}
    write_manifest(tmp_path, [record])
    assert read_manifest(tmp_path) == [record]
    assert json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])["method"] == "teacher"

    with pytest.raises(ValueError, match="steps"):
        write_manifest(tmp_path, [{k: v for k, v in record.items() if k != "steps"}])
    (tmp_path / "manifest.jsonl").write_text(json.dumps({**record, "file": "gone.mp4"}) + "\n")
    with pytest.raises(SampleFolderError, match="gone.mp4"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text("")
    with pytest.raises(ValueError, match="no videos"):
        read_manifest(tmp_path)


def test_failed_write_leaves_neither_half_file_nor_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
