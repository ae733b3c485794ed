"""dcm.evaluation.vbench_suite: VBench's 16 dimensions, what they need, and standard mode's file names."""

import json
from pathlib import Path

import pytest

from dcm.evaluation import vbench_suite, vbench_totals
from dcm.evaluation.vbench_suite import (
    DIMENSIONS,
    availability,
    readme_table,
    standard_video_name,
    suite_prompts,
)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty VBench, torch hub and Hugging Face caches, chosen through the environment."""
    dirs = {name: tmp_path / name for name in ("vbench", "torch", "hf")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(dirs["vbench"]))
    monkeypatch.setenv("TORCH_HOME", str(dirs["torch"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(dirs["hf"]))
    return dirs


def _place_all_files(dirs, dim):
    for f in dim.files:
        (dirs["vbench"] / f).parent.mkdir(parents=True, exist_ok=True)
        (dirs["vbench"] / f).write_bytes(b"")
    for f in dim.torch_hub_files:
        (dirs["torch"] / "hub" / f).parent.mkdir(parents=True, exist_ok=True)
        (dirs["torch"] / "hub" / f).write_bytes(b"")
    for repo, f in dim.hf_files:
        snap = dirs["hf"] / f"models--{repo}" / "snapshots" / "abc123"
        snap.mkdir(parents=True, exist_ok=True)
        (snap / f.split("|")[-1]).write_bytes(b"")


def test_all_sixteen_dimensions_grouped_as_vbench_scores():
    assert set(DIMENSIONS) == set(vbench_totals.DIMENSIONS) and len(DIMENSIONS) == 16
    assert {n for n, d in DIMENSIONS.items() if d.group == "quality"} == set(vbench_totals.QUALITY_DIMENSIONS)
    assert {n for n, d in DIMENSIONS.items() if d.group == "semantic"} == set(vbench_totals.SEMANTIC_DIMENSIONS)
    assert all(name == dim.name for name, dim in DIMENSIONS.items())


def test_custom_input_modes_match_vbench_refusals():
    """VBench.check_dimension_requires_extra_info's list (+ human_action, labelled by file name)."""
    standard_only = {n for n, d in DIMENSIONS.items() if "custom_input" not in d.modes}
    assert standard_only == {"object_class", "multiple_objects", "scene", "appearance_style", "color",
                             "spatial_relationship", "human_action"}
    assert all("standard" in d.modes for d in DIMENSIONS.values())


def test_cache_dir_follows_vbench(monkeypatch, tmp_path):
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path))
    assert vbench_suite.cache_dir() == tmp_path
    monkeypatch.delenv("VBENCH_CACHE_DIR")
    assert vbench_suite.cache_dir() == Path.home() / ".cache" / "vbench"


def test_empty_caches_report_every_file_by_full_path(empty_caches):
    present, missing = availability()
    assert "temporal_flickering" in present and "temporal_flickering" not in missing
    assert set(present) | set(missing) == set(DIMENSIONS)
    for name, dim in DIMENSIONS.items():
        if not (dim.files or dim.torch_hub_files or dim.hf_files):
            continue
        reasons = missing[name]
        for f in dim.files:
            assert str(empty_caches["vbench"] / f) in reasons
        for f in dim.torch_hub_files:
            assert str(empty_caches["torch"] / "hub" / f) in reasons
        for repo, f in dim.hf_files:
            assert str(empty_caches["hf"] / f"models--{repo}" / "snapshots" / "<revision>" / f) in reasons
    assert str(empty_caches["torch"] / "hub/checkpoints/dino_vitbase16_pretrain.pth") in missing["subject_consistency"]


def test_placing_the_files_makes_dimensions_available(empty_caches):
    for dim in DIMENSIONS.values():
        _place_all_files(empty_caches, dim)
    present, missing = availability()
    # what is left is only ever a package reason
    assert all(r.startswith("python package ") for reasons in missing.values() for r in reasons)
    assert {"temporal_flickering", "dynamic_degree", "subject_consistency"} <= set(present)
    # and the explicit cache argument wins over the environment
    present, missing = availability(["dynamic_degree"], cache=empty_caches["vbench"] / "elsewhere")
    assert present == [] and missing["dynamic_degree"] == [
        str(empty_caches["vbench"] / "elsewhere/raft_model/models/raft-things.pth")]


def test_missing_packages_and_versions_are_reported(empty_caches, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pyiqa" else real(n, *a))
    _place_all_files(empty_caches, DIMENSIONS["imaging_quality"])
    assert availability(["imaging_quality"])[1] == {"imaging_quality": ["python package pyiqa"]}
    monkeypatch.setattr(vbench_suite.metadata, "version", lambda dist: "4.56.0")
    assert vbench_suite._violated("transformers<4.56") == "python package transformers<4.56 (installed 4.56.0)"
    monkeypatch.setattr(vbench_suite.metadata, "version", lambda dist: "4.55.4.dev0")
    assert vbench_suite._violated("transformers<4.56") is None


def test_unknown_dimension_is_an_error(empty_caches):
    with pytest.raises(ValueError, match="unknown VBench dimension"):
        availability(["temporal_flicker"])
    with pytest.raises(ValueError, match="unknown VBench dimension"):
        suite_prompts(["temporal_flicker"])


def test_standard_video_name_pattern_with_special_characters():
    prompt = "A person is petting animal (not cat), façade's edge."
    assert standard_video_name(prompt, 0) == prompt + "-0.mp4"
    assert standard_video_name(prompt, 4, suffix=".gif") == prompt + "-4.gif"
    for bad in (-1, 5, True):
        with pytest.raises(ValueError):
            standard_video_name(prompt, bad)
    with pytest.raises(ValueError):
        standard_video_name("a/b", 0)


def test_standard_video_name_is_what_vbench_looks_for(tmp_path):
    """VBench's own standard-mode code (VBench.build_full_info_json) finds all 5 videos of every
    prompt of the suite, special characters included, under the names standard_video_name gives."""
    vbench = pytest.importorskip("vbench")
    videos = tmp_path / "videos"
    videos.mkdir()
    prompts = suite_prompts()
    for prompt in prompts:
        for i in range(vbench_suite.VIDEOS_PER_PROMPT):
            (videos / standard_video_name(prompt, i)).write_bytes(b"")
    assert any(not p.isascii() for p in prompts) and any("(" in p for p in prompts)
    bench = vbench.VBench(None, str(vbench_suite.full_info_path()), str(tmp_path / "out"))
    info_path = bench.build_full_info_json(str(videos), "t", list(DIMENSIONS), mode="vbench_standard")
    info = json.loads(Path(info_path).read_text(encoding="utf-8"))
    assert {e["prompt_en"] for e in info} == set(prompts) and len(info) == 946  # 2 prompts listed twice
    for entry in info:
        expected = [str(videos / standard_video_name(entry["prompt_en"], i)) for i in range(5)]
        assert entry["video_list"] == expected, entry["prompt_en"]
    # custom_input's inverse (vbench.utils.get_prompt_from_filename) gives the prompt back
    from vbench.utils import get_prompt_from_filename

    assert all(get_prompt_from_filename(standard_video_name(p, 3)) == p for p in prompts)


def test_suite_prompts():
    flicker = suite_prompts(["temporal_flickering"])
    everything = suite_prompts()
    assert flicker and set(flicker) <= set(everything)
    assert len(everything) == len(set(everything))
    entries = json.loads(vbench_suite.full_info_path().read_text(encoding="utf-8"))
    assert flicker == [e["prompt_en"] for e in entries if "temporal_flickering" in e["dimension"]]
    assert everything == list(dict.fromkeys(e["prompt_en"] for e in entries))


def test_readme_table_lists_every_dimension_and_file():
    table = readme_table()
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 16
    for dim in DIMENSIONS.values():
        row = next(line for line in lines if line.startswith(f"| `{dim.name}` |"))
        assert row.count(" | ") == 6
        for f, src in zip(dim.files, dim.sources):
            assert f"$VBENCH_CACHE_DIR/{f}" in row and src.replace("|", "\\|") in row
    assert "openai-clip" in table


def test_module_imports_no_heavy_packages():
    import subprocess
    import sys

    code = ("import sys, dcm.evaluation.vbench_suite as s; s.availability(); s.suite_prompts(); s.readme_table(); "
            "print(sorted(m for m in ('torch', 'vbench', 'numpy', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_vbench_docs_show_the_current_table():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "vbench.md").read_text()
    assert readme_table() in docs
