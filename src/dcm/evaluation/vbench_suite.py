"""What each of VBench's 16 dimensions needs to run, and how VBench's standard mode names videos.

Everything here was read from the installed ``vbench`` package (0.1.5), with ``local=True`` (the
way dcm calls it): ``vbench/utils.py`` ``init_submodules`` (the files under ``CACHE_DIR`` and the
URLs VBench would ``wget`` them from), ``vbench/<dimension>.py`` and ``vbench/third_party/*`` (what
each dimension imports and loads). dcm never lets VBench download: when a file is missing VBench
runs ``wget`` (some dimensions even with ``local=True``, and ``temporal_style`` /
``overall_consistency`` already at import time), so :func:`availability` is checked first and
the user places the files. Standard library only: importing this module imports neither torch
nor vbench.

Files outside ``$VBENCH_CACHE_DIR`` that dimensions still load:

* ``subject_consistency``: VBench checks ``dino_model/dino_vitbase16_pretrain.pth`` (and
  downloads it if absent), but the DINO ``hubconf.py`` it loads ignores that path and takes the
  weights through ``torch.hub.load_state_dict_from_url``, i.e. from
  ``$TORCH_HOME/hub/checkpoints/dino_vitbase16_pretrain.pth`` (downloaded there if absent).
* the GRiT dimensions (``object_class``, ``multiple_objects``, ``color``,
  ``spatial_relationship``) and ``scene`` call ``BertTokenizer.from_pretrained('bert-base-uncased')``;
  ``scene`` also ``BertModel.from_pretrained('bert-base-uncased')``: the Hugging Face cache must
  hold the repository ``bert-base-uncased`` (under that name).

Modes: VBench refuses ``object_class``, ``multiple_objects``, ``scene``, ``appearance_style``,
``color`` and ``spatial_relationship`` in ``custom_input`` mode
(``VBench.check_dimension_requires_extra_info``: they need the ``auxiliary_info`` of
``VBench_full_info.json``). ``human_action`` is accepted there but reads the true action from the
video's *file name* (``"A person is <action>-<i>.mp4"``), so it only means something on
standard-mode names.

Standard mode (``VBench.build_full_info_json``, ``mode="vbench_standard"``): for every entry of
``VBench_full_info.json`` that shares a dimension with the ones evaluated, VBench looks in
``videos_path`` for ``f"{prompt}{special_str}-{i}{postfix}"`` with ``i`` in ``range(5)`` (the
prompt verbatim, no escaping; ``special_str`` defaults to ``""``; ``postfix`` is the suffix of the
*first* name ``os.listdir`` returns, so the folder must hold only videos of one extension), and
warns about each missing one. Results go to ``{output_path}/{name}_eval_results.json``:
``{dimension: [aggregate_score, [{"video_path": ..., "video_results": ..., ...}, ...]]}``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

QUALITY, SEMANTIC = "quality", "semantic"
CUSTOM, STANDARD = "custom_input", "standard"
VIDEOS_PER_PROMPT = 5  # VBench's `for i in range(5)` in build_full_info_json

# pip names of the import names below where they differ
PIP_NAMES = {
    "clip": "openai-clip",
    "detectron2": "git+https://github.com/facebookresearch/detectron2.git (not on PyPI)",
}


def _parse_limit(limit: str) -> tuple[str, str, tuple[int, ...]]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(<=|<)(\d+(?:\.\d+)*)", limit)
    if not match:
        raise ValueError(f"version limit {limit!r}: expected 'dist<version' or 'dist<=version'")
    return match[1], match[2], tuple(int(p) for p in match[3].split("."))


@dataclass(frozen=True)
class Dimension:
    """What one VBench dimension needs (``local=True``) and where it can run.

    ``files`` are relative to :func:`cache_dir` and ``sources[i]`` is where VBench's code would
    download ``files[i]`` from; ``torch_hub_files`` (relative to :func:`torch_hub_dir`) pair with
    ``torch_hub_sources``; ``hf_files`` are ``(repo_id, file)`` pairs of the Hugging Face cache,
    ``file`` being ``"a|b"`` when either will do. ``extra_packages`` are import names beyond dcm's
    own dependencies; ``version_limits`` are ``"dist<version"`` / ``"dist<=version"`` bounds.
    """

    name: str
    group: str
    files: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    extra_packages: tuple[str, ...] = ()
    cpu: bool = True
    modes: tuple[str, ...] = (CUSTOM, STANDARD)
    note: str = ""
    torch_hub_files: tuple[str, ...] = ()
    torch_hub_sources: tuple[str, ...] = ()
    hf_files: tuple[tuple[str, str], ...] = ()
    version_limits: tuple[str, ...] = ()

    def __post_init__(self):
        if self.group not in (QUALITY, SEMANTIC):
            raise ValueError(f"{self.name}: group must be {QUALITY!r} or {SEMANTIC!r}")
        if len(self.files) != len(self.sources) or len(self.torch_hub_files) != len(self.torch_hub_sources):
            raise ValueError(f"{self.name}: one source per file")
        if not self.modes or set(self.modes) - {CUSTOM, STANDARD}:
            raise ValueError(f"{self.name}: modes must be a non-empty subset of {CUSTOM!r}, {STANDARD!r}")
        for limit in self.version_limits:
            _parse_limit(limit)


_CLIP_B32 = "clip_model/ViT-B-32.pt"
_CLIP_B32_URL = ("https://openaipublic.azureedge.net/clip/models/"
                 "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
_GRIT = ("grit_model/grit_b_densecap_objectdet.pth",)
_GRIT_URL = ("https://datarelease.blob.core.windows.net/grit/models/grit_b_densecap_objectdet.pth",)
_GRIT_PACKAGES = ("detectron2", "timm", "lvis", "boto3")
_GRIT_NOTE = ("GRiT dense captioner (vbench/third_party/grit_src) on detectron2; needs the prompt "
              "suite's auxiliary_info; BertTokenizer 'bert-base-uncased' from the Hugging Face cache")
_BERT_TOKENIZER = (("bert-base-uncased", "vocab.txt"),)
_VICLIP = ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz")
_VICLIP_URL = ("https://huggingface.co/OpenGVLab/VBench_Used_Models/resolve/main/ViClip-InternVid-10M-FLT.pth",
               "https://raw.githubusercontent.com/openai/CLIP/main/clip/bpe_simple_vocab_16e6.txt.gz")
_VICLIP_PACKAGES = ("clip", "einops", "ftfy", "timm")
_DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"

_ALL = (
    Dimension(
        "subject_consistency", QUALITY,
        files=("dino_model/facebookresearch_dino_main/hubconf.py", "dino_model/dino_vitbase16_pretrain.pth"),
        sources=("https://github.com/facebookresearch/dino (git clone, whole repository)", _DINO_URL),
        torch_hub_files=("checkpoints/dino_vitbase16_pretrain.pth",), torch_hub_sources=(_DINO_URL,),
        note="DINO ViT-B/16 via torch.hub.load(source='local') on the clone; its hubconf ignores VBench's "
             ".pth path and loads the weights from the torch hub cache"),
    Dimension(
        "background_consistency", QUALITY, files=(_CLIP_B32,), sources=(_CLIP_B32_URL,),
        extra_packages=("clip",), note="CLIP ViT-B/32 (clip.load on the file)"),
    Dimension(
        "temporal_flickering", QUALITY,
        note="mean absolute difference of consecutive frames (OpenCV); no model"),
    Dimension(
        "motion_smoothness", QUALITY,
        files=("amt_model/amt-s.pth",), sources=("https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth",),
        extra_packages=("imageio",),
        note="AMT-S frame interpolation (config shipped in vbench/third_party/amt/cfgs/AMT-S.yaml)"),
    Dimension(
        "dynamic_degree", QUALITY,
        files=("raft_model/models/raft-things.pth",),
        sources=("https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip (unzip -d raft_model/)",),
        note="RAFT optical flow; VBench unzips models.zip into raft_model/, giving models/raft-things.pth"),
    Dimension(
        "aesthetic_quality", QUALITY,
        files=("aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth", "clip_model/ViT-L-14.pt"),
        sources=("https://github.com/LAION-AI/aesthetic-predictor/blob/main/sa_0_4_vit_l_14_linear.pth?raw=true",
                 "https://openaipublic.azureedge.net/clip/models/"
                 "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
        extra_packages=("clip",),
        note="LAION aesthetic linear head on CLIP ViT-L/14; the head is loaded with torch.load without "
             "map_location (fine on CPU only if it was saved from CPU tensors)"),
    Dimension(
        "imaging_quality", QUALITY,
        files=("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
        sources=("https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/"
                 "musiq_spaq_ckpt-358bb6af.pth",),
        extra_packages=("pyiqa",), note="MUSIQ trained on SPAQ (pyiqa.archs.musiq_arch.MUSIQ)"),
    Dimension(
        "object_class", SEMANTIC, files=_GRIT, sources=_GRIT_URL, extra_packages=_GRIT_PACKAGES,
        modes=(STANDARD,), hf_files=_BERT_TOKENIZER, note=_GRIT_NOTE + " (ObjectDet task)"),
    Dimension(
        "multiple_objects", SEMANTIC, files=_GRIT, sources=_GRIT_URL, extra_packages=_GRIT_PACKAGES,
        modes=(STANDARD,), hf_files=_BERT_TOKENIZER, note=_GRIT_NOTE + " (ObjectDet task)"),
    Dimension(
        "human_action", SEMANTIC,
        files=("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",),
        sources=("https://huggingface.co/OpenGVLab/VBench_Used_Models/resolve/main/"
                 "l16_ptk710_ftk710_ftk400_f16_res224.pth",),
        extra_packages=("clip", "timm"), modes=(STANDARD,),
        note="UMT ViT-L/16 Kinetics-400 classifier; the true action is parsed from the file name "
             "('A person is <action>-<i>.mp4'), so only standard-mode names score meaningfully "
             "(VBench accepts it in custom_input)"),
    Dimension(
        "color", SEMANTIC, files=_GRIT, sources=_GRIT_URL, extra_packages=_GRIT_PACKAGES,
        modes=(STANDARD,), hf_files=_BERT_TOKENIZER, note=_GRIT_NOTE + " (DenseCap task)"),
    Dimension(
        "spatial_relationship", SEMANTIC, files=_GRIT, sources=_GRIT_URL, extra_packages=_GRIT_PACKAGES,
        modes=(STANDARD,), hf_files=_BERT_TOKENIZER, note=_GRIT_NOTE + " (ObjectDet task)"),
    Dimension(
        "scene", SEMANTIC,
        files=("caption_model/tag2text_swin_14m.pth",),
        sources=("https://huggingface.co/spaces/xinyu1205/recognize-anything/resolve/main/tag2text_swin_14m.pth",),
        extra_packages=("timm", "fairscale"), modes=(STANDARD,),
        hf_files=(("bert-base-uncased", "vocab.txt"), ("bert-base-uncased", "config.json"),
                  ("bert-base-uncased", "model.safetensors|pytorch_model.bin")),
        version_limits=("transformers<4.56",),
        note="Tag2Text Swin-B captioner; its med.py imports apply_chunking_to_forward from "
             "transformers.modeling_utils, gone from transformers 4.56 (VBench pins 4.33.2); "
             "BERT tokenizer and weights 'bert-base-uncased' from the Hugging Face cache"),
    Dimension(
        "temporal_style", SEMANTIC, files=_VICLIP, sources=_VICLIP_URL, extra_packages=_VICLIP_PACKAGES,
        note="ViCLIP video-text similarity to the prompt (from the file name or prompt list in "
             "custom_input); the BPE vocabulary is fetched when vbench's ViCLIP tokenizer is imported "
             "(a copy ships inside the clip package)"),
    Dimension(
        "appearance_style", SEMANTIC, files=(_CLIP_B32,), sources=(_CLIP_B32_URL,),
        extra_packages=("clip",), modes=(STANDARD,),
        note="CLIP ViT-B/32 similarity of each frame to the style text in the suite's auxiliary_info"),
    Dimension(
        "overall_consistency", SEMANTIC, files=_VICLIP, sources=_VICLIP_URL, extra_packages=_VICLIP_PACKAGES,
        note="ViCLIP video-text similarity to the prompt, as temporal_style"),
)

DIMENSIONS: dict[str, Dimension] = {d.name: d for d in _ALL}


def _env_dir(var: str) -> Path | None:
    """``$var`` as a path (``~`` expanded, as torch and huggingface_hub do), None when unset."""
    value = os.environ.get(var)
    return None if value is None else Path(os.path.expanduser(value))


def cache_dir() -> Path:
    """VBench's ``CACHE_DIR``: ``$VBENCH_CACHE_DIR``, else ``~/.cache/vbench`` (``vbench/utils.py``).

    VBench reads the variable once, when ``vbench.utils`` is imported: set it before that.
    An empty value raises ValueError (VBench would fail on ``os.makedirs('')``).
    """
    value = os.environ.get("VBENCH_CACHE_DIR")
    if value is None:
        return Path.home() / ".cache" / "vbench"
    if not value:
        raise ValueError("VBENCH_CACHE_DIR is set but empty")
    return Path(value)


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``'s default: ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else
    ``~/.cache/torch/hub`` (a ``torch.hub.set_dir`` call at run time is not seen here)."""
    torch_home = _env_dir("TORCH_HOME")
    if torch_home is None:
        xdg = _env_dir("XDG_CACHE_HOME")
        torch_home = (Path.home() / ".cache" if xdg is None else xdg) / "torch"
    return torch_home / "hub"


def hf_hub_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if (explicit := _env_dir(var)) is not None:
            return explicit
    home = _env_dir("HF_HOME")
    if home is None:
        xdg = _env_dir("XDG_CACHE_HOME")
        home = (Path.home() / ".cache" if xdg is None else xdg) / "huggingface"
    return home / "hub"


def _release(version: str) -> tuple[int, ...]:
    """The leading numeric components of a version string: '4.55.0.dev0' -> (4, 55, 0)."""
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits[0]))
        if digits[0] != piece:
            break
    return tuple(parts)


def _violated(limit: str) -> str | None:
    dist, op, bound = _parse_limit(limit)
    try:
        installed = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return f"python package {limit} (not installed)"
    have = _release(installed)
    width = max(len(have), len(bound))
    have, bound = have + (0,) * (width - len(have)), bound + (0,) * (width - len(bound))
    ok = have < bound if op == "<" else have <= bound
    return None if ok else f"python package {limit} (installed {installed})"


def _hf_missing(hub: Path, repo: str, file: str) -> str | None:
    snapshots = hub / f"models--{repo.replace('/', '--')}" / "snapshots"
    names = file.split("|")
    if snapshots.is_dir() and any((snap / n).is_file() for snap in snapshots.iterdir() for n in names):
        return None
    return str(snapshots / "<revision>" / file)


def _checked(names) -> list[str]:
    if names is None:
        return list(DIMENSIONS)
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown VBench dimension(s) {unknown}; expected some of: {', '.join(DIMENSIONS)}")
    return names


def availability(dimensions=None, cache=None, *, torch_hub=None, hf_hub=None
                 ) -> tuple[list[str], dict[str, list[str]]]:
    """The dimensions that can run now, and for each other one why not.

    ``dimensions``: names (default all 16, in :data:`DIMENSIONS` order); ``cache``,
    ``torch_hub``, ``hf_hub`` default to :func:`cache_dir`, :func:`torch_hub_dir`,
    :func:`hf_hub_dir`. Reasons are missing files as full paths, missing packages as
    ``"python package X"`` (``vbench`` itself included) and version bounds not met. Nothing is
    imported: packages are looked up with ``importlib.util.find_spec``.
    """
    names = _checked(dimensions)
    cache = Path(cache) if cache is not None else cache_dir()
    torch_hub = Path(torch_hub) if torch_hub is not None else torch_hub_dir()
    hf_hub = Path(hf_hub) if hf_hub is not None else hf_hub_dir()
    present, missing = [], {}
    for name in names:
        dim = DIMENSIONS[name]
        reasons = [str(cache / f) for f in dim.files if not (cache / f).is_file()]
        reasons += [str(torch_hub / f) for f in dim.torch_hub_files if not (torch_hub / f).is_file()]
        reasons += [r for repo, f in dim.hf_files if (r := _hf_missing(hf_hub, repo, f))]
        reasons += [f"python package {p}" for p in ("vbench", *dim.extra_packages)
                    if importlib.util.find_spec(p) is None]
        reasons += [r for limit in dim.version_limits if (r := _violated(limit))]
        if reasons:
            missing[name] = reasons
        else:
            present.append(name)
    return present, missing


def standard_video_name(prompt: str, index: int, suffix: str = ".mp4", special_str: str = "") -> str:
    """The file name VBench's standard mode looks for: ``f"{prompt}{special_str}-{index}{suffix}"``.

    ``vbench/__init__.py``, ``VBench.build_full_info_json`` (``mode="vbench_standard"``):
    ``intended_video_name = f'{prompt}{special_str}-{str(i)}{postfix}'`` for ``i in range(5)``, the
    prompt used verbatim (spaces, commas, apostrophes, parentheses and non-ASCII characters stay).
    ``postfix`` is the suffix of the first file ``os.listdir`` returns, so every file in the
    folder must have the same ``suffix``.
    """
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < VIDEOS_PER_PROMPT:
        raise ValueError(f"index {index!r}: VBench's standard mode looks for indices 0-{VIDEOS_PER_PROMPT - 1}")
    if not suffix.startswith(".") or "/" in suffix:
        raise ValueError(f"suffix {suffix!r} must be a file extension such as '.mp4'")
    name = f"{prompt}{special_str}-{index}{suffix}"
    if "/" in name or "\0" in name or not prompt:
        raise ValueError(f"prompt {prompt!r} cannot be a file name")
    return name


def full_info_path() -> Path:
    """``VBench_full_info.json`` inside the installed ``vbench`` package (found without importing it:
    ``importlib.resources.files('vbench')`` would import vbench, hence torch, decord and OpenCV)."""
    spec = importlib.util.find_spec("vbench")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the vbench package is not installed; its prompt suite ships with it")
    for location in spec.submodule_search_locations:
        path = Path(location) / "VBench_full_info.json"
        if path.is_file():
            return path
    raise FileNotFoundError(f"VBench_full_info.json not found in {list(spec.submodule_search_locations)}")


def suite_prompts(dimensions: list[str] | None = None) -> list[str]:
    """The prompts of ``VBench_full_info.json`` whose entry lists any of ``dimensions`` (default: all),
    without repeats, in file order: the prompts standard mode needs videos for."""
    wanted = set(_checked(dimensions))
    entries = json.loads(full_info_path().read_text(encoding="utf-8"))
    seen: dict[str, None] = {}
    for entry in entries:
        if wanted & set(entry["dimension"]):
            seen.setdefault(entry["prompt_en"], None)
    return list(seen)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme_table() -> str:
    """A Markdown table of the 16 dimensions: files and where they go, sources, CPU, packages, modes."""
    rows = ["| Dimension | Group | Files (where they go) | Source | CPU | Extra packages | Modes |",
            "|---|---|---|---|---|---|---|"]
    for dim in DIMENSIONS.values():
        files = [f"`$VBENCH_CACHE_DIR/{f}`" for f in dim.files]
        files += [f"`$TORCH_HOME/hub/{f}`" for f in dim.torch_hub_files]
        sources = list(dim.sources) + list(dim.torch_hub_sources)
        hf_repos = sorted({repo for repo, _ in dim.hf_files})
        for repo in hf_repos:
            listed = ", ".join(f for r, f in dim.hf_files if r == repo)
            files.append(f"Hugging Face cache: `{repo}` ({listed})")
            sources.append(f"https://huggingface.co/{repo}")
        packages = [f"`{p}`" + (f" (pip: {PIP_NAMES[p]})" if p in PIP_NAMES else "") for p in dim.extra_packages]
        packages += [f"`{limit}`" for limit in dim.version_limits]
        rows.append("| " + " | ".join(_cell(c) for c in (
            f"`{dim.name}`", dim.group, "<br>".join(files) or "none", "<br>".join(sources) or "-",
            "yes" if dim.cpu else "no", ", ".join(packages) or "-", ", ".join(dim.modes))) + " |")
    return "\n".join(rows) + "\n"
