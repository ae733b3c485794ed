"""Files: H.264 round trip, the sample-directory contract, atomic writes, checkpoints."""

import json

import av
import numpy as np
import pytest
import torch

from dcm.errors import SampleFolderError
from dcm.io import (CheckpointError, atomic_path, load_checkpoint, read_manifest, read_mp4, save_checkpoint,
                    write_manifest, write_mp4)
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


def _identical(a, b) -> bool:
    """Equal values of equal types all the way down, tensors bit for bit with their dtype and shape."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):  # a state dict's OrderedDict comes back a dict, in the same order
        return isinstance(b, dict) and list(a) == list(b) and all(type(k) is type(j) for k, j in zip(a, b)) and all(
            _identical(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))
    return a == b


def _stepped_adamw() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(4, 3)).square().sum().backward()
    optimizer.step()
    return model, optimizer


def test_a_checkpoint_gives_back_the_training_state_exactly_and_holds_no_pickle(tmp_path):
    torch.manual_seed(0)
    model, optimizer = _stepped_adamw()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
             "generator": torch.Generator().manual_seed(3).get_state(), "step": 7, "seconds": None,
             "half": torch.ones(2, dtype=torch.float16), "lr_ratios": [0.1, 1 / 3, float("inf")],
             "validation": [{"step": 5, "acc_color": 0.25, "swap_color@0.7": -0.5}], "sharded": False}
    save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(tmp_path / "c.safetensors")
    # an optimizer's state is keyed by parameter number (int) and holds tuples: as JSON alone both would change
    assert _identical(back, state)
    assert not (tmp_path / "c.safetensors").read_bytes().startswith(b"PK")  # not torch.save's zip of pickles
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # written atomically
    assert load_checkpoint(tmp_path / "none.safetensors") is None

    resumed = torch.nn.Linear(3, 2)
    resumed.load_state_dict(back["model"])
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3, betas=(0.9, 0.99))
    resumed_optimizer.load_state_dict(back["optimizer"])
    batch = torch.randn(4, 3)
    for m, o in ((model, optimizer), (resumed, resumed_optimizer)):
        o.zero_grad()
        m(batch).square().sum().backward()
        o.step()
    assert torch.equal(resumed.weight, model.weight) and torch.equal(resumed.bias, model.bias)


def test_an_old_pickle_checkpoint_is_refused_with_the_way_to_convert_it(tmp_path):
    state = {"step": 3, "weights": torch.arange(4.0), "betas": (0.9, 0.99)}
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="old pickle format") as refused:
        load_checkpoint(tmp_path / "checkpoint.safetensors")
    message = str(refused.value)
    assert str(tmp_path / "checkpoint.pt") in message and "delete it to start this stage over" in message
    exec(message.split('python -c "')[1].split('"')[0])  # the conversion the message gives
    assert _identical(load_checkpoint(tmp_path / "checkpoint.safetensors"), state)

    (tmp_path / "other.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="other.safetensors is not a safetensors checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
