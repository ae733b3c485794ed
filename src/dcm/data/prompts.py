"""Where prompts come from: the toy grammar, a text file, or VBench's own prompt suite.

A prompt source is a path to a text file (one prompt per line), ``vbench`` (every prompt of the
suite shipped in the ``vbench`` package, ``VBench_full_info.json``) or ``vbench:<dimension>``
(the prompts VBench uses for one dimension, e.g. ``vbench:temporal_flickering``). An image-to-video
model's prompt set is a ``.csv`` or ``.jsonl`` file with a ``text`` and an ``image`` column (the
image's path, relative to the file), one image per distinct prompt.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from dcm.config import Params
from dcm.errors import DcmError
from dcm.data.splits import split_seeds, toy_items
from dcm.world.grammar import PromptError as GrammarError
from dcm.world.grammar import parse_prompt

VBENCH = "vbench"


class PromptError(DcmError, ValueError):
    """A prompt source that does not exist or holds no prompts."""


def vbench_suite() -> list[dict]:
    """VBench's prompt list: ``{"prompt_en": ..., "dimension": [...]}`` entries."""
    return json.loads(resources.files("vbench").joinpath("VBench_full_info.json").read_text())


def read_prompts(source: str, toy_grammar: bool = False) -> list[str]:
    """The prompts of ``source`` (see the module docstring), in order. ``toy_grammar``: each must
    follow the toy world's grammar, the only prompts the tiny backbone knows and the toy world scores."""
    if source == VBENCH or source.startswith(f"{VBENCH}:"):
        suite = vbench_suite()
        dimension = source.partition(":")[2]
        if dimension:
            known = sorted({d for entry in suite for d in entry["dimension"]})
            if dimension not in known:
                raise PromptError(f"prompt source {source!r}: VBench has no dimension {dimension!r}; "
                                  f"known: {', '.join(known)}")
            suite = [e for e in suite if dimension in e["dimension"]]
        numbered = [(f"prompt source {source!r}, prompt {n}", e["prompt_en"]) for n, e in enumerate(suite, start=1)]
    else:
        path = Path(source)
        if not path.is_file():
            raise PromptError(f"prompt file {path} does not exist (give a text file with one prompt per line, "
                              f"a .csv or .jsonl with text and image columns, '{VBENCH}' or '{VBENCH}:<dimension>')")
        if path.suffix in TABLES:
            numbered = [(f"prompt file {path}, row {n}", row["text"]) for n, row in enumerate(_rows(path), start=1)]
        else:
            numbered = [(f"prompt file {path}, line {n}", line.strip())
                        for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
        if not numbered:
            raise PromptError(f"prompt file {path} holds no prompts")
    if toy_grammar:
        for where, prompt in numbered:
            try:
                parse_prompt(prompt)
            except GrammarError as err:
                raise PromptError(f"{where}: {err}; the tiny backbone (model.backbone = 'tiny') knows only the toy "
                                  "world's prompts: use prompts of that form, or a real backbone") from None
    return [prompt for _, prompt in numbered]


TABLES = (".csv", ".jsonl")


def _rows(path: Path) -> list[dict]:
    """The rows of a .csv or .jsonl prompt file, each with its ``text``."""
    import csv

    if path.suffix == ".csv":
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for n, row in enumerate(rows, start=1):
        if not str(row.get("text") or "").strip():
            raise PromptError(f"prompt file {path}, row {n}: no text (columns: text, and image for image-to-video)")
    return rows


def prompt_images(source: str | None) -> dict[str, Path]:
    """``{prompt: image path}`` of a prompt file with an ``image`` column (paths relative to the file),
    checked to exist; empty for any other source."""
    if not source or is_vbench_suite(source) or Path(source).suffix not in TABLES:
        return {}
    path = Path(source)
    images: dict[str, Path] = {}
    for n, row in enumerate(_rows(path), start=1):
        if not row.get("image"):
            continue
        image = (path.parent / row["image"]).resolve()
        if not image.is_file():
            raise PromptError(f"prompt file {path}, row {n}: image {image} does not exist")
        if images.get(row["text"], image) != image:
            raise PromptError(f"prompt file {path}, row {n}: the prompt {row['text']!r} has another image in an "
                              "earlier row; give each distinct prompt one image")
        images[row["text"]] = image
    return images


def load_prompt_images(params: Params, key: str, source: str | None, teacher_dir: Path) -> dict:
    """The images of the prompt source ``source`` (the param ``key``) as uint8 arrays, checked before the
    teacher loads: an image-to-video teacher needs one per prompt at the video's size, a text-to-video
    teacher takes none."""
    import numpy as np
    from PIL import Image

    from dcm.models import teacher_takes_images

    images, takes = prompt_images(source), teacher_takes_images(teacher_dir)
    if takes and not images:
        raise PromptError(f"{key} = {source!r} gives no images, and the teacher in {teacher_dir} is image-to-video: "
                          "give a .csv or .jsonl prompt file with text and image columns")
    if images and not teacher_takes_images(teacher_dir, optional=True):
        raise PromptError(f"{key} = {source!r} gives images, and the teacher in {teacher_dir} is text-to-video (its "
                          "transformer takes no image condition): give a text-only prompt file, or an "
                          "image-to-video model")
    size = (params.model.width, params.model.height)
    arrays = {}
    for prompt, path in images.items():
        with Image.open(path) as image:
            if image.size != size:
                raise PromptError(f"{key}: image {path} is {image.size[0]}x{image.size[1]}; the video is "
                                  f"{size[0]}x{size[1]} (model.width x model.height): resize it")
            arrays[prompt] = np.array(image.convert("RGB"))
    return arrays


def load_teacher_for_prompts(params: Params, key: str, teacher_dir: Path):
    """The teacher in ``teacher_dir``, given the images of the prompt source the param ``key`` names
    (``trajectories.prompt_file`` or ``sample.prompt_file``) when it is conditioned on images; the images
    are checked (:func:`load_prompt_images`) before any weight loads."""
    from dcm.models import load_backbone

    section, field = key.split(".")
    images = load_prompt_images(params, key, getattr(getattr(params, section), field), teacher_dir)
    backbone = load_backbone(teacher_dir)
    if images:
        backbone.use_images(images, params.model.video_shape(params.world)[0])
    return backbone


def heldout_prompts(source: str | None, videos: int, seed: int, toy_grammar: bool = False) -> tuple[list[str],
                                                                                                   list[int]]:
    """``videos`` prompts (``source`` cycled, or the toy grammar shuffled) with seeds never trained on;
    ``toy_grammar``: as :func:`read_prompts`."""
    if source:
        prompts = read_prompts(source, toy_grammar)
        return [prompts[i % len(prompts)] for i in range(videos)], split_seeds("heldout", videos, seed)
    items = toy_items("heldout", videos, seed)
    return [p.text for p, _ in items], [s for _, s in items]


def is_vbench_suite(source: str | None) -> bool:
    return bool(source) and (source == VBENCH or source.startswith(f"{VBENCH}:"))


def sample_items(params: Params) -> tuple[list[str], list[int], list[str]]:
    """Prompts, seeds and file names of the sample stage. VBench's suite is sampled as its standard
    mode expects: its first ``sample.videos`` prompts (of the dimension, with ``vbench:<dimension>``),
    each ``sample.videos_per_prompt`` times, named ``<prompt>-<i>.mp4``; other prompts cycle to
    ``sample.videos`` videos named by number."""
    from dcm.evaluation.vbench_suite import standard_video_name, suite_prompts

    s = params.sample
    if is_vbench_suite(s.prompt_file):
        read_prompts(s.prompt_file, params.model.toy_world)  # an unknown dimension is a clear error
        dimension = s.prompt_file.partition(":")[2]
        prompts = suite_prompts([dimension] if dimension else None)[: s.videos]
        items = [(prompt, i) for prompt in prompts for i in range(s.videos_per_prompt)]
        seeds = split_seeds("heldout", len(items), s.seed)
        return [p for p, _ in items], seeds, [standard_video_name(p, i) for p, i in items]
    prompts, seeds = heldout_prompts(s.prompt_file, s.videos, s.seed, params.model.toy_world)
    return prompts, seeds, [f"{i:04d}.mp4" for i in range(len(prompts))]
