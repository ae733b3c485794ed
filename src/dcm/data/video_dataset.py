"""Real videos with their captions as training data: VAE latents and text embeddings in shards.

The release distils from clean latents of real videos (the teacher takes one guided step online
from the noised latent), so the training set costs one VAE encode per video instead of a teacher
ODE solve. A dataset is read in the layout of diffusers' training examples and Hugging Face's
``videofolder``: a folder of videos with ``metadata.jsonl`` or ``metadata.csv`` holding
``file_name`` (relative to the metadata file's folder) and ``text``; other CSVs (OpenVid's
``video``, ``caption``) name their columns with a mapping.

Shards follow :mod:`dcm.data.trajectories`: shard ``i`` holds metadata rows
``[i * shard_size, (i + 1) * shard_size)`` (fewer videos when some are skipped), is a
``safetensors`` file written atomically with a JSON sidecar (content hash, rows, spec), is skipped
when the stage reruns, and is written by process ``i % num_processes`` under ``accelerate launch``.
A video that cannot be used (missing, undecodable, too short, too slow for the frame rate) is
skipped with a warning naming it and counted in ``summary.json``. On the toy world,
:func:`render_toy_dataset` makes such a folder from the ground truth, so the path runs on CPU.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dcm.config import Params
from dcm.data.splits import distill_seeds
from dcm.data.video_frames import Skip, read_clip
from dcm.errors import DcmError
from dcm.layout import MANIFEST
from dcm.io import atomic_path, atomic_write_text, read_shard, sha256_file, write_json, write_mp4
from dcm.models.base import Backbone
from dcm.world.grammar import Prompt, all_prompts
from dcm.world.render import WorldConfig, render_video

log = logging.getLogger(__name__)

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
FIELDS = ("file_name", "text")
SUMMARY = "summary.json"
TOY_WORLD = "toy_world.json"


class VideoDatasetError(DcmError, ValueError):
    """A video dataset without metadata, without the needed columns, or without one usable video."""


class DatasetShardError(DcmError, RuntimeError):
    """A latent shard that is missing, truncated, corrupted or made with other settings."""


@dataclass(frozen=True)
class VideoRecord:
    """One metadata row: the file as the metadata names it, its caption, and where it is."""

    file_name: str
    text: str
    path: Path


def find_metadata(source: str | Path) -> Path:
    """``source`` itself when it is a ``.jsonl`` or ``.csv`` file, else the folder's one metadata file."""
    source = Path(source)
    if source.is_file():
        if source.suffix not in (".jsonl", ".csv"):
            raise VideoDatasetError(f"video dataset metadata {source} is neither .jsonl nor .csv")
        return source
    if not source.is_dir():
        raise VideoDatasetError(f"video dataset {source} does not exist (a folder with metadata.jsonl or "
                                "metadata.csv, or such a file)")
    found = [source / name for name in METADATA_FILES if (source / name).is_file()]
    if not found:
        raise VideoDatasetError(f"video dataset folder {source} holds no {' or '.join(METADATA_FILES)} "
                                "(one row per video with file_name and text)")
    if len(found) > 1:
        raise VideoDatasetError(f"video dataset folder {source} holds both {' and '.join(METADATA_FILES)}; "
                                "keep one, or name the metadata file itself")
    return found[0]


def _rows(path: Path) -> tuple[list[dict], list[str]]:
    """The metadata rows and the column names found."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:  # spreadsheets write a BOM
            reader = csv.DictReader(fh)
            rows = list(reader)
            return rows, list(reader.fieldnames or [])
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise VideoDatasetError(f"{path}:{number} is not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise VideoDatasetError(f"{path}:{number} is not a JSON object with file_name and text")
        rows.append(row)
    return rows, list(dict.fromkeys(key for row in rows for key in row))


def read_metadata(source: str | Path, columns: Mapping[str, str] | None = None,
                  videos_dir: str | Path | None = None) -> list[VideoRecord]:
    """The dataset's rows, checked before any video is opened.

    ``source``: a dataset folder or its metadata file. ``columns`` maps ``file_name`` and ``text``
    to the file's column names (e.g. OpenVid: ``{"file_name": "video", "text": "caption"}``).
    ``videos_dir``: where ``file_name`` is relative to (default: the metadata file's folder).
    """
    columns = {**{field: field for field in FIELDS}, **(columns or {})}
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise VideoDatasetError(f"video dataset column mapping has keys {unknown}; allowed: {', '.join(FIELDS)}")
    path = find_metadata(source)
    rows, found = _rows(path)
    if not rows:
        raise VideoDatasetError(f"video dataset metadata {path} lists no videos")
    missing = [f"{columns[f]} (for {f})" if columns[f] != f else f for f in FIELDS if columns[f] not in found]
    if missing:
        raise VideoDatasetError(f"video dataset metadata {path} lacks the column(s) {', '.join(missing)}; it has "
                                f"{', '.join(found) or 'none'} (map them, e.g. "
                                "{'file_name': 'video', 'text': 'caption'})")
    root = Path(videos_dir) if videos_dir is not None else path.parent
    names = [str(row.get(columns["file_name"]) or "") for row in rows]
    return [VideoRecord(name, str(row.get(columns["text"]) or ""), root / name)
            for name, row in zip(names, rows, strict=True)]


@dataclass(frozen=True)
class DatasetSpec:
    """What must match between the shards and the run that reads them."""

    backbone: str
    frames: int
    height: int
    width: int
    fps: float | None  # None: the first ``frames`` frames at the source rate (dcm.data.video_frames)
    shape: tuple[int, ...]  # one video's latents: (C, T, H, W)
    text_shape: tuple[int, ...]  # one prompt's embeddings: (L, D)
    dtype: str

    @classmethod
    def for_backbone(cls, backbone: Backbone, frames: int, height: int, width: int, fps: float | None = None,
                     dtype: str = "float16") -> DatasetSpec:
        """The spec of clips ``(frames, height, width)`` encoded by ``backbone`` (one empty prompt is
        encoded to learn the text shape; an image-to-video model's conditioning also holds the first frame)."""
        text = backbone.encode_prompts([""])
        if backbone.condition_channels:
            text = backbone.condition_on_images(text, [np.zeros((height, width, 3), np.uint8)], frames)
        text_shape = tuple(text.shape[1:])
        shape = tuple(backbone.latent_shape(frames, height, width))
        return cls(backbone.kind, frames, height, width, None if fps is None else float(fps), shape, text_shape,
                   dtype)


def spec_from_params(params: Params, backbone: Backbone) -> DatasetSpec:
    """The spec the ``dataset`` params ask of ``backbone``: clips of the model's video size."""
    return DatasetSpec.for_backbone(backbone, *params.model.video_shape(params.world), fps=params.dataset.fps,
                                    dtype=params.dataset.dtype)


def check_manifest(directory: str | Path, params: Params) -> None:
    """Fail fast, before any model is loaded, when the encoded dataset is missing or was made with
    other settings (everything but the shapes, which need the backbone to know)."""
    manifest_path = Path(directory) / MANIFEST
    if not manifest_path.exists():
        raise DatasetShardError(f"{manifest_path} is missing: run `dvc repro dataset` (or `dcm dataset`) first "
                                "(distill.source = 'data')")
    spec = json.loads(manifest_path.read_text())["spec"]
    frames, height, width = params.model.video_shape(params.world)
    expected = {"backbone": params.model.backbone, "frames": frames, "height": height, "width": width,
                "fps": params.dataset.fps, "dtype": params.dataset.dtype}
    changed = ", ".join(f"{k} {spec.get(k)} there, {v} now" for k, v in expected.items() if spec.get(k) != v)
    if changed:
        raise DatasetShardError(f"{manifest_path} was made with other settings ({changed}); rerun the dataset stage "
                                "(`dvc repro dataset`)")


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(asdict(value) if isinstance(value, DatasetSpec) else value))


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _rows_of(records: list[VideoRecord]) -> list[list[str]]:
    return [[r.file_name, r.text] for r in records]


def _files_of(records: list[VideoRecord]) -> list[list[int] | None]:
    """Size and modification time of each video (None if missing): a file rewritten since its shard
    was encoded (new renders of another world, a re-download) makes the shard be encoded again."""
    return [[r.path.stat().st_size, r.path.stat().st_mtime_ns] if r.path.is_file() else None for r in records]


def _shard_is_done(directory: Path, index: int, spec: DatasetSpec, records: list[VideoRecord],
                   teacher: str | None) -> bool:
    shard, sidecar = directory / _shard_name(index), directory / f"{_shard_name(index)}.json"
    if not (shard.exists() and sidecar.exists()):
        return False
    meta = json.loads(sidecar.read_text())
    return meta.get("spec") == _jsonable(spec) and meta.get("rows") == _rows_of(records) \
        and meta.get("files") == _files_of(records) and meta.get("teacher") == teacher \
        and meta.get("bytes") == shard.stat().st_size


@dataclass(frozen=True)
class DatasetSummary:
    """What the stage made of the dataset: videos listed, kept, and skipped (per reason and per file)."""

    videos: int
    kept: int
    skipped: dict[str, int]
    skipped_files: list[dict[str, str]]  # file, reason, detail
    manifest: Path


@torch.no_grad()
def _encode_shard(records: list[VideoRecord], backbone: Backbone, spec: DatasetSpec, batch_size: int,
                  bar: tqdm) -> tuple[dict[str, torch.Tensor], list[VideoRecord], list[dict[str, str]]]:
    """Latents and text embeddings of the usable videos of one shard, those videos, and the skipped."""
    dtype = getattr(torch, spec.dtype)
    latents = [torch.zeros((0, *spec.shape), dtype=dtype)]
    embeds = [torch.zeros((0, *spec.text_shape), dtype=dtype)]
    kept: list[VideoRecord] = []
    skipped: list[dict[str, str]] = []
    pending: list[tuple[VideoRecord, torch.Tensor]] = []

    def encode() -> None:
        pixels = torch.stack([clip for _, clip in pending])
        lat = backbone.encode_video(pixels).to("cpu", dtype)
        if tuple(lat.shape[1:]) != spec.shape:
            raise VideoDatasetError(f"the {spec.backbone} backbone encodes {spec.frames}x{spec.height}x{spec.width} "
                                    f"clips to latents {tuple(lat.shape[1:])}, not its latent_shape {spec.shape}; "
                                    "choose a frame count and size the model's VAE accepts")
        latents.append(lat)
        text = backbone.encode_prompts([r.text for r, _ in pending])
        if backbone.condition_channels:  # image to video: each video's first frame is its image (the release's)
            firsts = [((clip[:, 0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
                      for _, clip in pending]
            text = backbone.condition_on_images(text, firsts, spec.frames)
        embeds.append(text.to("cpu", dtype))
        kept.extend(r for r, _ in pending)
        pending.clear()

    for record in records:
        clip = read_clip(record.path, spec.frames, spec.height, spec.width, spec.fps)
        if isinstance(clip, Skip):
            log.warning("dataset: skipping %s: %s (%s)", record.path, clip.reason, clip.detail)
            skipped.append({"file": record.file_name, "reason": clip.reason, "detail": clip.detail})
        else:
            pending.append((record, clip))
            if len(pending) == batch_size:
                encode()
        bar.update(1)
    if pending:
        encode()
    return {"latents": torch.cat(latents).contiguous(), "prompt_embeds": torch.cat(embeds).contiguous()}, kept, skipped


def encode_dataset(records: list[VideoRecord], backbone: Backbone, spec: DatasetSpec, out_dir: str | Path,
                   shard_size: int = 16, batch_size: int = 4, accelerator: Accelerator | None = None, *,
                   teacher: str | None = None) -> DatasetSummary:
    """Encode (or finish encoding) every usable video into shards; write the manifest and ``summary.json``.

    A finished shard is kept only if its videos are unchanged and ``teacher`` (the fingerprint of the
    folder whose VAE and text encoder encode them, ``dcm.io.tree_fingerprint``) made it.

    Raises :class:`VideoDatasetError` when not one video is usable (after writing the summary).
    The backbone's VAE and text encoder run where they are (the existing stages keep them on CPU).
    """
    if not records:
        raise VideoDatasetError("the video dataset lists no videos")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = [records[i:i + shard_size] for i in range(0, len(records), shard_size)]
    mine = [i for i in range(len(shards)) if i % accelerator.num_processes == accelerator.process_index]
    todo = [i for i in mine if not _shard_is_done(out_dir, i, spec, shards[i], teacher)]
    log.info("dataset: process %d of %d writes shards %s", accelerator.process_index, accelerator.num_processes, mine)
    if len(todo) < len(mine):
        log.info("dataset: %d of %d shards of this process already done, skipping them", len(mine) - len(todo),
                 len(mine))
    bar = tqdm(total=sum(len(shards[i]) for i in todo), desc=f"dataset[{accelerator.process_index}]", unit="video",
               disable=not accelerator.is_local_main_process)
    for index in todo:
        tensors, kept, skipped = _encode_shard(shards[index], backbone, spec, batch_size, bar)
        shard = out_dir / _shard_name(index)
        with atomic_path(shard) as tmp:
            save_file(tensors, str(tmp))
        write_json(f"{shard}.json", {"spec": _jsonable(spec), "rows": _rows_of(shards[index]),
                                     "files": _files_of(shards[index]), "teacher": teacher,
                                     "kept": _rows_of(kept), "skipped": skipped,
                                     "sha256": sha256_file(shard), "bytes": shard.stat().st_size})
    bar.close()
    accelerator.wait_for_everyone()
    sidecars = [json.loads((out_dir / f"{_shard_name(i)}.json").read_text()) for i in range(len(shards))]
    skipped_files = [entry for meta in sidecars for entry in meta["skipped"]]
    summary = DatasetSummary(len(records), sum(len(meta["kept"]) for meta in sidecars),
                             dict(sorted(Counter(entry["reason"] for entry in skipped_files).items())),
                             skipped_files, out_dir / MANIFEST)
    if accelerator.is_main_process:
        entries = [{"file": _shard_name(i), "count": len(meta["kept"]), "sha256": meta["sha256"],
                    "bytes": meta["bytes"], "file_names": [f for f, _ in meta["kept"]],
                    "prompts": [t for _, t in meta["kept"]]} for i, meta in enumerate(sidecars)]
        write_json(out_dir / SUMMARY, {"videos": summary.videos, "kept": summary.kept, "skipped": summary.skipped,
                                       "skipped_files": skipped_files})
        write_json(summary.manifest, {"spec": _jsonable(spec), "videos": summary.kept, "shards": entries})
    accelerator.wait_for_everyone()
    log.info("dataset: %d of %d videos kept; skipped: %s", summary.kept, summary.videos, summary.skipped or "none")
    if summary.kept == 0:
        raise VideoDatasetError(f"not one of the {summary.videos} videos could be used ({summary.skipped}); "
                                f"see {out_dir / SUMMARY}")
    return summary


@dataclass
class VideoLatents:
    """The encoded dataset in memory: ``latents (n, C, T, H, W)``, ``prompt_embeds (n, L, D)``."""

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    prompts: list[str]
    spec: DatasetSpec
    manifest_sha256: str


def load(directory: str | Path, expected: DatasetSpec, verify_hash: bool = True) -> VideoLatents:
    """Load and check every shard; anything that does not match is a :class:`DatasetShardError`."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise DatasetShardError(f"{manifest_path} is missing: run the dataset stage first")
    manifest = json.loads(manifest_path.read_text())
    if manifest["spec"] != _jsonable(expected):
        changed = ", ".join(f"{k} {manifest['spec'].get(k)} there, {v} now" for k, v in _jsonable(expected).items()
                            if manifest["spec"].get(k) != v)
        raise DatasetShardError(f"{manifest_path} was made with other settings ({changed}); rerun the dataset stage")
    dtype = getattr(torch, expected.dtype)
    latents, embeds, prompts = [], [], []
    for entry in manifest["shards"]:
        path = directory / entry["file"]
        tensors = read_shard(path, entry, manifest_path, verify_hash, DatasetShardError)
        for key, shape in (("latents", expected.shape), ("prompt_embeds", expected.text_shape)):
            tensor, want = tensors.get(key), (entry["count"], *shape)
            if tensor is None or tuple(tensor.shape) != want or tensor.dtype != dtype:
                got = None if tensor is None else (tuple(tensor.shape), str(tensor.dtype))
                raise DatasetShardError(f"shard {path} holds {key} {got}, expected {want} of {dtype}")
        latents.append(tensors["latents"])
        embeds.append(tensors["prompt_embeds"])
        prompts.extend(entry["prompts"])
    return VideoLatents(torch.cat(latents), torch.cat(embeds), prompts, expected, sha256_file(manifest_path))


def toy_dataset_items(videos: int, seed: int) -> list[tuple[Prompt, int]]:
    """``videos`` toy (prompt, seed) pairs of the training split: the grammar in a cycle shuffled by
    ``seed``, with the distillation seeds (:func:`dcm.data.splits.distill_seeds`)."""
    prompts = all_prompts()
    order = np.random.default_rng(seed).permutation(len(prompts))
    return [(prompts[order[i % len(prompts)]], s) for i, s in enumerate(distill_seeds(videos, seed))]


def render_toy_dataset(out_dir: str | Path, world: WorldConfig, videos: int, seed: int, fps: int = 8) -> Path:
    """Render (or finish rendering) a dataset folder of toy ground-truth videos with ``metadata.jsonl``
    (``file_name``, ``text``, ``seed``). Returns the metadata path.

    Videos already rendered with the same settings (``toy_world.json``) are kept; other settings
    start the folder afresh. The metadata is written last, so its presence means complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _jsonable({"world": asdict(world), "videos": videos, "seed": seed, "fps": fps})
    settings_path, metadata = out_dir / TOY_WORLD, out_dir / METADATA_FILES[0]
    if not settings_path.exists() or json.loads(settings_path.read_text()) != settings:
        metadata.unlink(missing_ok=True)
        for old in out_dir.glob("video-*.mp4"):
            old.unlink()
        write_json(settings_path, settings)
    rows = []
    for index, (prompt, video_seed) in enumerate(tqdm(toy_dataset_items(videos, seed), desc="toy dataset",
                                                      unit="video")):
        name = f"video-{index:05d}.mp4"
        if not (out_dir / name).exists():
            write_mp4(out_dir / name, render_video(prompt, video_seed, world), fps=fps)
        rows.append({"file_name": name, "text": prompt.text, "seed": video_seed})
    atomic_write_text(metadata, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return metadata
