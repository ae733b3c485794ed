"""Files: atomic writes, H.264 videos and the sample-directory contract.

A sample directory holds ``*.mp4`` files and ``manifest.jsonl`` with one JSON object per
video: at least ``file`` (relative), ``prompt``, ``seed``, ``method`` and ``steps``.
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

from dcm.errors import MissingInputError, SampleFolderError

MANIFEST = "manifest.jsonl"
REQUIRED_FIELDS = ("file", "prompt", "seed", "method", "steps")


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


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
