"""Files: atomic writes, training checkpoints, H.264 videos and the sample-directory contract.

A sample directory holds ``*.mp4`` files and ``manifest.jsonl`` with one JSON object per
video: at least ``file`` (relative), ``prompt``, ``seed``, ``method`` and ``steps``.

A checkpoint is one safetensors file: the tensors of a training state under their paths in it
(``optimizer/state/0/exp_avg``), and everything else (step, optimizer settings, how the dicts,
lists and tuples nest) as JSON in the file's header. Reading it runs no code, unlike a pickle,
which matters for a checkpoint from a shared DVC remote or a clone.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from dcm.errors import DcmError, MissingInputError, SampleFolderError

MANIFEST = "manifest.jsonl"
REQUIRED_FIELDS = ("file", "prompt", "seed", "method", "steps")
CHECKPOINT_STATE = "dcm.state"  # the header entry of a checkpoint holding its JSON part
LEGACY_CHECKPOINT_SUFFIX = ".pt"  # checkpoints were pickles (torch.save) beside where they are now
# JSON forms of what JSON lacks: a tensor (its name in the file), a tuple, a dict with keys other than text
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


class CheckpointError(DcmError, ValueError):
    """A checkpoint dcm does not read: an old pickle checkpoint, or a file that is not a checkpoint."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training state atomically: nested dicts, lists and tuples of tensors, numbers, text,
    booleans and ``None`` (see the module docstring). :func:`load_checkpoint` gives it back exactly."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    body = _encode(state, "", tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={CHECKPOINT_STATE: json.dumps(body)})


def keep_copy(source: str | Path, copy: str | Path) -> None:
    """Make ``copy`` hold ``source``'s bytes as they are now, atomically: a hard link (free, and
    unaffected when ``source`` is later replaced, as every write here replaces), or a copy where the
    file system has no links."""
    import shutil

    with atomic_path(copy) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The state :func:`save_checkpoint` wrote at ``path`` (tensors on the CPU, bit for bit), or
    ``None`` when there is none. An old pickle checkpoint where it used to be is an error, not
    ignored: the stage would silently start over."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    legacy = path.with_suffix(LEGACY_CHECKPOINT_SUFFIX)
    if not path.exists():
        if legacy.exists():
            raise CheckpointError(f"{legacy} is a checkpoint in the old pickle format, which dcm no longer reads; "
                                  "convert it once (torch's weights-only loader runs no code): python -c \"import "
                                  f"torch; from dcm.io import save_checkpoint; save_checkpoint('{path}', "
                                  f"torch.load('{legacy}', weights_only=True))\", or delete it to start this stage "
                                  "over")
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            body = (f.metadata() or {}).get(CHECKPOINT_STATE)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({err}); delete it to start this stage "
                              "over") from None
    if body is None:
        raise CheckpointError(f"{path} holds tensors but no dcm training state ({CHECKPOINT_STATE} in its header); "
                              "delete it to start this stage over")
    return _decode(json.loads(body), tensors)


def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, its tensors moved to ``tensors`` under their paths (``name``)."""
    if isinstance(value, torch.Tensor):
        if name in tensors:
            raise ValueError(f"two tensors of one checkpoint have the path {name!r}")
        tensors[name] = value.detach().cpu().contiguous()
        return {_TENSOR: name}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        encoded = [(_encode(k, "", tensors), _encode(v, f"{name}/{k}" if name else str(k), tensors))
                   for k, v in value.items()]
        if all(isinstance(k, str) for k in value) and not {_TENSOR, _TUPLE, _ITEMS} & set(value):
            return dict(encoded)
        return {_ITEMS: [list(item) for item in encoded]}  # e.g. an optimizer's state, keyed by parameter number
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a checkpoint holds tensors, dicts, lists, tuples, numbers, text and None, not "
                    f"{type(value).__name__} ({name})")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`_encode`."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if value.keys() == {_TENSOR}:
        return tensors[value[_TENSOR]]
    if value.keys() == {_TUPLE}:
        return tuple(_decode(v, tensors) for v in value[_TUPLE])
    if value.keys() == {_ITEMS}:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value[_ITEMS]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows of one table as CSV, written atomically."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def write_mp4(path: str | Path, video: np.ndarray, fps: int = 8) -> None:
    """Write ``(T, H, W, 3)`` floats in [0, 1] as H.264 in 4:4:4 at a lossless setting, so the
    fine textures and saturated colours survive for evaluation."""
    frames = (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)
    with atomic_path(Path(path)) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264rgb", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "rgb24"
            stream.options = {"crf": "0", "preset": "veryslow"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def read_mp4(path: str | Path) -> np.ndarray:
    """Read an mp4 back as ``(T, H, W, 3)`` float32 in [0, 1]."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.stack(frames).astype(np.float32) / 255.0


def write_manifest(directory: str | Path, records: list[dict[str, Any]]) -> None:
    for record in records:
        missing = [k for k in REQUIRED_FIELDS if k not in record]
        if missing:
            raise ValueError(f"manifest record {record} lacks {', '.join(missing)}")
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write_text(Path(directory) / MANIFEST, text)


def read_manifest(directory: str | Path) -> list[dict[str, Any]]:
    """Read and check a sample directory: every record complete, every file present."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise MissingInputError(f"sample directory {directory} has no {MANIFEST} (run the stage that samples it: "
                                "`dvc repro sample`)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        missing = [k for k in REQUIRED_FIELDS if k not in record]
        if missing:
            raise SampleFolderError(f"{path}:{number} lacks {', '.join(missing)}")
        if not (directory / record["file"]).exists():
            raise SampleFolderError(f"{path}:{number} names {record['file']}, which is not in {directory}")
        records.append(record)
    if not records:
        raise SampleFolderError(f"{path} lists no videos")
    return records


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    import hashlib

    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def tree_fingerprint(directory: str | Path) -> str:
    """Hex sha256 of every file under ``directory`` (relative path and contents): a trained teacher's
    identity, so shards a resumed stage keeps are the ones this teacher made. A real backbone's
    teacher folder holds only its link (``backbone.json``), so this hashes the path, not the weights."""
    import hashlib

    digest = hashlib.sha256()
    root = Path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def read_shard(path: Path, entry: dict, manifest_path: Path, verify_hash: bool,
               error: type[Exception]) -> dict[str, torch.Tensor]:
    """A safetensors shard listed in a manifest (``entry``: its ``bytes`` and ``sha256``), checked
    first: a missing, truncated, replaced or corrupted shard raises ``error`` naming it."""
    from safetensors.torch import load_file

    if not path.exists():
        raise error(f"shard {path} listed in {manifest_path} is missing")
    if path.stat().st_size != entry["bytes"]:
        raise error(f"shard {path} has {path.stat().st_size} bytes, the manifest says {entry['bytes']} "
                    "(truncated or replaced)")
    if verify_hash and sha256_file(path) != entry["sha256"]:
        raise error(f"shard {path} does not match its sha256 in {manifest_path} (corrupted)")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for damaged files
        raise error(f"shard {path} cannot be read: {err}") from err

