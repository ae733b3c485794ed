"""Export the distilled students to stock diffusers, so they run where dcm is not installed.

* :func:`export_wan_pipeline` writes a ``diffusers.WanPipeline`` directory: ``transformer`` is the
  semantic expert, ``transformer_2`` the detail expert as one plain ``WanTransformer3DModel`` (PE:
  the LoRA merged into the semantic expert's weights and the copied timestep layers written in;
  OD: the separately trained model) and ``boundary_ratio`` the boundary's sigma, so the pipeline's
  own two-expert switch (made for Wan2.2) runs DCM's switch. ``ablation.od = false`` gives a
  single-transformer pipeline.
* :func:`export_detail_lora` writes the PE detail expert as a diffusers LoRA file plus its copied
  timestep layers, for any real backbone (CogVideoX and HunyuanVideo pipelines hold one
  transformer, so they cannot switch experts by themselves).

The limitation: the stock pipeline calls ``scheduler.set_timesteps(num_inference_steps)`` and
nothing else, so it runs :func:`stock_sigmas`, not the DCM schedule dcm samples with
(``schedule("dcm", k, N, boundary)``: ``k/2`` grid points in ``[N, boundary]``, ``k/2`` in
``[boundary, 0]``). For ``flow.shift = 3``, 4 steps, boundary 35 of 50 (sigma 0.8750):

* dcm:   1.0000 0.9403 | 0.8750 0.6279 (then 0), experts S S | D D;
* stock: 1.0000 0.8577 0.6022 0.0089 (then 0), experts S D D D.

The pipeline's switch still matches dcm's (the detail expert runs every step from a sigma at or
below the boundary sigma), but the students are then evaluated off the points they were trained
on. To see (and score) exactly what the exported pipeline produces, sample with
``sample.schedule: stock`` (``dvc exp run -S sample.schedule=stock``), which runs dcm's sampler on
:func:`dcm.sampling.stock_sigmas`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dcm import flow
from dcm.config import Params
from dcm.data.prompts import prompt_images
from dcm.errors import DcmError
from dcm.experts import ParameterEfficientExpert
from dcm.io import atomic_write_text, write_json
from dcm.layout import STUDENT_MODEL, Layout, adapter_config, adapter_weights
from dcm.models import BACKBONES, META, WanBackbone, backbone_class, load_backbone
from dcm.sampling import SamplingError, schedule, stock_sigmas
from dcm.students import (StudentError, StudentRecord, check_record, load_adapter_expert, load_full_model,
                          load_semantic)

#: added to the boundary sigma for ``boundary_ratio``: dcm runs the detail expert at sigmas <= the
#: boundary's, WanPipeline runs ``transformer_2`` at timesteps strictly below ``1000 * boundary_ratio``,
#: so a step from exactly the boundary needs the ratio a hair above it (1e-3 in timesteps, far more
#: than float32 rounding near t = 1000, far less than any step of a few-step schedule)
BOUNDARY_EPSILON = 1e-6
LORA_FILE = "pytorch_lora_weights.safetensors"
SEMANTIC_LORA_FILE = "semantic_lora_weights.safetensors"  # distill.lora_only: the semantic expert's LoRA
COPIED_FILE = "copied_layers.safetensors"


class ExportError(DcmError, ValueError):
    """An export that cannot be made from these params and artifacts."""


def merged_transformer(expert: ParameterEfficientExpert) -> nn.Module:
    """An adapter expert (PE or LoRA-only) as one plain transformer of its base's class (its LoRA merged
    into the weights, copied timestep layers written in, no other adapter of the base), so a stock
    pipeline can hold it."""
    from accelerate import init_empty_weights

    with expert.fused() as model:  # leaving the block swaps the base weights back, hence the clones
        state = {k.replace(".base_layer", ""): v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    with init_empty_weights():
        plain = type(expert.base).from_config(expert.base.config)
    plain.load_state_dict(state, assign=True)  # strict: every weight of the plain transformer is written
    return plain


def copied_layers(state: dict[str, torch.Tensor], timestep_layers: list[str]) -> dict[str, torch.Tensor]:
    """The copied timestep layers of a ``detail.safetensors`` state, keyed by their paths in the transformer."""
    out, used = {}, set()
    for name in timestep_layers:
        key = name.replace(".", "__")
        for k, v in state.items():
            if k == f"copies.{key}":
                out[name] = v
            elif k.startswith(f"copy_modules.{key}."):
                out[f"{name}.{k[len(f'copy_modules.{key}.'):]}"] = v
            else:
                continue
            used.add(k)
    unknown = [k for k in state if not k.startswith("lora.") and k not in used]
    if unknown:
        raise ExportError(f"detail.safetensors holds entries of no listed timestep layer: {unknown[:5]}")
    return out


def _require(path: Path, what: str, stage: str) -> None:
    if not path.exists():
        raise ExportError(f"{what} is missing: expected {path} (run `dvc repro {stage}` first)")


def _checked_students(params: Params, layout: Layout) -> tuple[str, str]:
    """Check the semantic and detail records against params (a stale expert is refused, naming the
    stage to rerun); return what each wrote: ("full" or "lora", "pe", "full", "lora" or "none")."""
    kinds = []
    try:
        for stage in ("semantic", "detail"):
            record = StudentRecord.read(layout.student(stage), stage)
            check_record(record, params, layout)
            kinds.append(record.kind)
    except StudentError as err:
        raise ExportError(str(err)) from None
    for stage, kind in zip(("semantic", "detail"), kinds, strict=True):
        needed = {"pe": (adapter_weights(stage), adapter_config(stage)), "lora": (adapter_weights(stage),
                  adapter_config(stage)), "full": (f"{STUDENT_MODEL}/config.json",), "none": ()}[kind]
        for name in needed:
            _require(layout.student(stage) / name, f"the {kind} {stage} expert's {name}", stage)
    return kinds[0], kinds[1]


def _check_backbone(params: Params, fmt: str) -> None:
    kind = params.model.backbone
    adapter = backbone_class(kind)
    if adapter.pipeline_class is None:
        exportable = [name for name, cls in BACKBONES.items() if cls.pipeline_class]
        raise ExportError(f"model.backbone = {kind!r} cannot be exported to stock diffusers: no stock diffusers "
                          f"pipeline runs it (the tiny teacher works in pixel space, without a VAE); export a real "
                          f"backbone (model.backbone = {', '.join(exportable)})")
    if fmt == "pipeline" and not adapter.two_expert_pipeline:
        two = [name for name, cls in BACKBONES.items() if cls.two_expert_pipeline]
        raise ExportError(f"model.backbone = {kind!r}: only {', '.join(two)} has a stock pipeline with two "
                          f"transformers (WanPipeline's transformer_2 and boundary_ratio); {adapter.pipeline_class} "
                          "holds one, so export the detail expert as a LoRA instead (`dcm export --format lora`, "
                          "export_detail_lora)")


@contextlib.contextmanager
def _atomic_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` that replaces it only when the block succeeds, so an
    interrupted export never leaves a half-written directory where a loader would find it."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            old = tmp.with_name(f"{tmp.name}.old")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _experts(sigmas: list[float], uses_detail, two: bool) -> list[str]:
    return [("detail" if uses_detail(s) else "semantic") if two else "vanilla" for s in sigmas[:-1]]


def export_wan_pipeline(params: Params, layout: Layout = Layout(), out_dir: Path | None = None,
                        steps: int = 4) -> Path:
    """Write the DCM student of a Wan backbone as a ``diffusers.WanPipeline`` directory (see the module
    docstring for what it runs); everything is checked before any weights are loaded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline

    _check_backbone(params, "pipeline")
    if steps < 1:
        raise ExportError(f"steps = {steps}: the pipeline needs at least one step")
    out_dir = out_dir or layout.export("pipeline")
    teacher_dir = layout.teacher_model
    _require(teacher_dir / META, "the teacher directory's backbone.json", "teacher")
    link = json.loads((teacher_dir / META).read_text())
    if link["kind"] != WanBackbone.kind:
        raise ExportError(f"{teacher_dir / META} points at a {link['kind']!r} backbone, params say "
                          f"{WanBackbone.kind!r}")
    WanBackbone.check(link["path"])
    semantic_kind, kind = _checked_students(params, layout)

    backbone = load_backbone(teacher_dir)
    semantic = load_semantic(backbone, layout)
    if semantic_kind == "lora":
        semantic = merged_transformer(semantic)
    detail_dir = layout.student("detail")
    if kind in ("pe", "lora"):  # on a copy of the semantic expert, which the pipeline holds as it is
        on_semantic = ParameterEfficientExpert.base_of(detail_dir, "detail") == "semantic"
        detail = merged_transformer(load_adapter_expert(detail_dir, backbone, layout, "detail",
                                                        copy.deepcopy(semantic) if on_semantic else None))
    else:
        detail = load_full_model(detail_dir, backbone, "detail") if kind == "full" else None
    n, b, shift = params.flow.steps, params.boundary, params.flow.shift
    grid = flow.sigma_grid(n, shift)
    boundary_sigma = float(grid[b])
    ratio = boundary_sigma + BOUNDARY_EPSILON if detail is not None else None
    # an I2V model, or TI2V-5B sampled from images: WanImageToVideoPipeline (TI2V-5B from text: WanPipeline)
    image_to_video = bool(backbone.condition_channels or prompt_images(params.sample.prompt_file))
    stock = stock_sigmas(steps, shift)
    try:
        dcm, why = [float(grid[i]) for i in schedule("dcm", steps, n, b)], None
    except SamplingError as err:
        dcm, why = None, str(err)
    info = {
        "format": "WanImageToVideoPipeline" if image_to_video else "WanPipeline", "steps": steps, "boundary": b, "flow_steps": n, "shift": shift,
        "boundary_sigma": boundary_sigma, "boundary_ratio": ratio, "boundary_epsilon": BOUNDARY_EPSILON,
        "expand_timesteps": backbone.expand_timesteps,
        "semantic_kind": semantic_kind, "detail_kind": kind, "max_sequence_length": backbone.max_sequence_length,
        "stock_sigmas": stock,
        "stock_experts": _experts(stock, lambda s: s < ratio, detail is not None),
        "dcm_sigmas": dcm, "dcm_schedule_note": why,
        "dcm_experts": None if dcm is None else _experts(dcm, lambda s: s <= boundary_sigma, detail is not None),
        "params": params.model_dump(mode="json"),
    }
    parts = dict(tokenizer=backbone.tokenizer, text_encoder=backbone.text_encoder, vae=backbone.vae,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), transformer=semantic, transformer_2=detail,
                 boundary_ratio=ratio, expand_timesteps=backbone.expand_timesteps)
    if image_to_video:  # the stock pipeline that builds the same image condition
        pipe = WanImageToVideoPipeline(**parts, image_encoder=backbone.image_encoder,
                                       image_processor=backbone.image_processor)
    else:
        pipe = WanPipeline(**parts)
    with _atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp)
        write_json(tmp / "dcm_export.json", info)
        atomic_write_text(tmp / "README.md", _pipeline_readme(out_dir, params, info))
    return out_dir


def _sigma_row(sigmas: list[float], experts: list[str]) -> str:
    return " ".join(f"{s:.4f} ({e[0].upper()})" for s, e in zip(sigmas, experts, strict=False)) + " -> 0"


def _pipeline_readme(out_dir: Path, params: Params, info: dict) -> str:
    m, k = params.model, info["steps"]
    dcm_row = (_sigma_row(info["dcm_sigmas"], info["dcm_experts"]) if info["dcm_sigmas"]
               else f"n/a: {info['dcm_schedule_note']}")
    seq = ("" if info["max_sequence_length"] == WanBackbone.default_max_sequence_length
           else f", max_sequence_length={info['max_sequence_length']}")
    how = {"pe": "LoRA merged, copied layers in", "lora": "its LoRA merged", "full": "full model"}
    experts = (f"`transformer` is the semantic expert ({how[info['semantic_kind']]}), `transformer_2` the detail "
               f"expert ({how[info['detail_kind']]}); "
               f"`boundary_ratio` = {info['boundary_ratio']:.7f} = the boundary sigma {info['boundary_sigma']:.7f} "
               f"(grid index {info['boundary']} of {info['flow_steps']}) + {BOUNDARY_EPSILON:g}, so a step from "
               "exactly the boundary runs the detail expert, as in dcm."
               if info["boundary_ratio"] is not None else
               "One transformer (ablation.od = false: one vanilla student for every step), no boundary.")
    pipeline = info["format"]
    image = ('image=load_image("first_frame.png"), ' if pipeline == "WanImageToVideoPipeline" else "")
    imports = ("# WanImageToVideoPipeline (diffusers 0.42.1) needs `pip install ftfy` for text prompts\n"
               "from diffusers.utils import load_image\n" if image else "")
    return f"""# DCM student as a stock diffusers `{pipeline}`

```python
import torch
from diffusers import {pipeline}
{imports}pipe = {pipeline}.from_pretrained("{out_dir}", torch_dtype=torch.bfloat16).to("cuda")
video = pipe({image}prompt="a cat surfing a wave", num_inference_steps={k}, guidance_scale=1.0,
             num_frames={m.frames}, height={m.height}, width={m.width}{seq}).frames[0]
```

{experts} Keep `guidance_scale=1.0`: the students learned the CFG-guided teacher, so any higher
scale guides twice (and doubles the cost).

## Schedule: what the pipeline runs vs. what dcm samples with

WanPipeline only calls `scheduler.set_timesteps(num_inference_steps)`, so it runs the stock
`FlowMatchEulerDiscreteScheduler(shift={info['shift']})` sigmas, not dcm's DCM schedule ({k // 2} grid points
in [{info['flow_steps']}, {info['boundary']}] and {k // 2} in [{info['boundary']}, 0]) that the experts were
trained and evaluated on. Sigmas of the {k} steps (S semantic, D detail, V vanilla expert):

| schedule | sigmas |
|---|---|
| dcm (`dcm sample`) | {dcm_row} |
| stock (this pipeline) | {_sigma_row(info['stock_sigmas'], info['stock_experts'])} |

Expect the pipeline's videos to differ from dcm's at the same step count: the experts run at
noise levels they were not distilled for. dcm's own sampler on the stock schedule reproduces this
pipeline exactly:
`sample.schedule: stock` in dcm's params (`dvc exp run -S sample.schedule=stock`), which runs dcm's
sampler on `dcm.sampling.stock_sigmas({k}, {info['shift']})`.
`dcm_export.json` lists both schedules and the source params.
"""


def _adapter_files(directory: Path, stage: str) -> tuple[dict, dict, dict]:
    """An adapter expert's LoRA in PEFT's keys, its copied layers keyed by their paths, and its config."""
    config = json.loads((directory / adapter_config(stage)).read_text())
    state = load_file(str(directory / adapter_weights(stage)))
    lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
    return lora, copied_layers(state, config["timestep_layers"]), config


def _lora_metadata(config: dict) -> dict:
    return {"r": config["r"], "lora_alpha": config["lora_alpha"], "target_modules": config["target_modules"]}


def export_detail_lora(params: Params, layout: Layout = Layout(), out_dir: Path | None = None) -> Path:
    """Write the detail expert's LoRA as ``pytorch_lora_weights.safetensors`` (loadable by the backbone
    pipeline's ``load_lora_weights``), the PE expert's copied layers as ``copied_layers.safetensors``,
    and with ``distill.lora_only`` the semantic expert's LoRA as ``semantic_lora_weights.safetensors``;
    no model is loaded."""
    import diffusers

    _check_backbone(params, "lora")
    adapter = backbone_class(params.model.backbone)
    out_dir = out_dir or layout.export("lora")
    semantic_kind, kind = _checked_students(params, layout)
    detail_dir = layout.student("detail")
    if kind not in ("pe", "lora"):
        raise ExportError(f"the detail expert in {detail_dir} is {kind!r}, not an adapter (pe or lora): "
                          "there is no LoRA to export" + ("; use `dcm export --format pipeline`" if kind == "full"
                                                          and adapter.two_expert_pipeline else ""))
    lora, copied, config = _adapter_files(detail_dir, "detail")
    pipeline = getattr(diffusers, adapter.pipeline_class)
    info = {"format": f"{adapter.pipeline_class} LoRA", "backbone": params.model.backbone,
            "lora": _lora_metadata(config), "base": config.get("base", "semantic"),
            "copied_layers": config["timestep_layers"], "boundary": params.boundary, "flow_steps": params.flow.steps,
            "boundary_sigma": float(flow.sigma_grid(params.flow.steps, params.flow.shift)[params.boundary])
            if adapter.flow_matching else None,
            "semantic_lora": None, "params": params.model_dump(mode="json")}
    with _atomic_dir(out_dir) as tmp:
        pipeline.save_lora_weights(tmp, transformer_lora_layers=lora, weight_name=LORA_FILE,
                                   transformer_lora_adapter_metadata=info["lora"])
        if copied:
            save_file(copied, str(tmp / COPIED_FILE))
        if semantic_kind == "lora":
            semantic_lora, _, semantic_config = _adapter_files(layout.student("semantic"), "semantic")
            info["semantic_lora"] = _lora_metadata(semantic_config)
            pipeline.save_lora_weights(tmp, transformer_lora_layers=semantic_lora, weight_name=SEMANTIC_LORA_FILE,
                                       transformer_lora_adapter_metadata=info["semantic_lora"])
        write_json(tmp / "dcm_export.json", info)
        atomic_write_text(tmp / "README.md", _lora_readme(out_dir, layout.student("semantic") / STUDENT_MODEL,
                                                          params, info))
    return out_dir


def _lora_readme(out_dir: Path, semantic: Path, params: Params, info: dict) -> str:
    if info["semantic_lora"] is not None:
        return _lora_only_readme(out_dir, params, info)
    if info["base"] == "transformer_2":
        return _transformer_2_lora_readme(out_dir, semantic, params, info)
    adapter, b, n = backbone_class(params.model.backbone), params.boundary, params.flow.steps
    pipeline, model = adapter.pipeline_class, adapter.transformer_class
    where = (f"at and below flow sigma {info['boundary_sigma']:.7f} (timestep {1000 * info['boundary_sigma']:.3f})"
             if info["boundary_sigma"] is not None else
             f"from the DDPM timestep of grid index {b} of the scheduler's own {n}-step timesteps "
             f"(`dcm.models.load_backbone(teacher).sigma_grid({n}, shift)[{b}]`) down to 0")
    return f"""# DCM detail expert as a diffusers LoRA ({pipeline})

The detail expert = the **semantic expert** (`{semantic}`, not the original teacher)
+ this LoRA (r={info['lora']['r']}, alpha={info['lora']['lora_alpha']}, on {', '.join(info['lora']['target_modules'])})
+ the copied timestep layers ({', '.join(info['copied_layers'])}) in `{COPIED_FILE}`, keyed by their
paths in the transformer. It is trained for the low-noise steps: {where}.

```python
from diffusers import {pipeline}, {model}
from safetensors.torch import load_file
semantic = {model}.from_pretrained("{semantic}")
pipe = {pipeline}.from_pretrained("{params.model.path}", transformer=semantic)
pipe.load_lora_weights("{out_dir}", adapter_name="detail")
assert not pipe.transformer.load_state_dict(load_file("{out_dir}/{COPIED_FILE}"), strict=False).unexpected_keys
```

After this the transformer *is* the detail expert for every step (loading the copied layers overwrites
the semantic expert's). Stock pipelines do not switch experts by timestep:

* Wan: prefer `dcm export --format pipeline` (WanPipeline's `transformer_2` + `boundary_ratio` switch).
* CogVideoX and HunyuanVideo: `CogVideoXPipeline` and `HunyuanVideoPipeline` hold one transformer.
  Either sample with the semantic expert alone (skip both loads; the low-noise steps then lack the
  detail expert), or switch yourself (untested sketch): keep a clone of the semantic expert's
  values of the copied keys, start with `pipe.disable_lora()` and, when the next step starts at or
  below the boundary, load `{COPIED_FILE}` and call `pipe.enable_lora()` (e.g. in `callback_on_step_end`).
  HunyuanVideo's experts were trained with the embedded guidance
  `model.embedded_guidance_scale` = {params.model.embedded_guidance_scale}: pass it as the pipeline's `guidance_scale`.
"""


def _transformer_2_lora_readme(out_dir: Path, semantic: Path, params: Params, info: dict) -> str:
    """A two-expert teacher's detail expert: the LoRA and copied layers sit on its own ``transformer_2``."""
    ratio = info["boundary_sigma"] + BOUNDARY_EPSILON
    return f"""# DCM detail expert as a diffusers LoRA on Wan2.2's `transformer_2`

The detail expert = the teacher's own low-noise **`transformer_2`** + this LoRA (r={info['lora']['r']},
alpha={info['lora']['lora_alpha']}, on {', '.join(info['lora']['target_modules'])}) + the copied timestep
layers ({', '.join(info['copied_layers'])}) in `{COPIED_FILE}`, keyed by their paths in the transformer.
The semantic expert (`{semantic}`) replaces `transformer`; `boundary_ratio` moves to the students'
boundary, grid index {info['boundary']} of {info['flow_steps']} (sigma {info['boundary_sigma']:.7f}).

```python
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file
pipe = WanPipeline.from_pretrained("{params.model.path}", boundary_ratio={ratio:.7f},
                                   transformer=WanTransformer3DModel.from_pretrained("{semantic}"))
pipe.load_lora_weights("{out_dir}", adapter_name="detail", load_into_transformer_2=True)
assert not pipe.transformer_2.load_state_dict(load_file("{out_dir}/{COPIED_FILE}"), strict=False).unexpected_keys
video = pipe("a cat surfing a wave", num_inference_steps=4, guidance_scale=1.0).frames[0]
```

`dcm export --format pipeline` writes the same students with the LoRA merged, as one directory.
"""


def _lora_only_readme(out_dir: Path, params: Params, info: dict) -> str:
    """``distill.lora_only``: both experts are LoRAs on the teacher's own transformer(s)."""
    adapter = backbone_class(params.model.backbone)
    pipeline, model = adapter.pipeline_class, adapter.transformer_class
    two = info["base"] == "transformer_2"
    where = (f"at and below flow sigma {info['boundary_sigma']:.7f}" if info["boundary_sigma"] is not None
             else f"from grid index {info['boundary']} of {info['flow_steps']} down to 0")
    head = f"""# DCM experts as two diffusers LoRAs on the teacher ({pipeline})

Both experts are LoRAs alone on the frozen teacher (`distill.lora_only`), nothing else trained:

* `{SEMANTIC_LORA_FILE}`: the semantic expert, on the teacher's `transformer` (r={info['semantic_lora']['r']},
  alpha={info['semantic_lora']['lora_alpha']}, on {', '.join(info['semantic_lora']['target_modules'])});
* `{LORA_FILE}`: the detail expert, on the teacher's `{info['base']}` (r={info['lora']['r']},
  alpha={info['lora']['lora_alpha']}, on {', '.join(info['lora']['target_modules'])}), for the steps {where}
  (grid index {info['boundary']} of {info['flow_steps']}).
"""
    if not adapter.two_expert_pipeline:
        return head + f"""
`{pipeline}` holds one transformer: load `{SEMANTIC_LORA_FILE}` for the high-noise steps and swap to
`{LORA_FILE}` (`pipe.set_adapters`) for the steps at and below the boundary, e.g. in `callback_on_step_end`.
"""
    ratio = info["boundary_sigma"] + BOUNDARY_EPSILON
    second = "" if two else (f",\n                                   transformer_2={model}.from_pretrained("
                             f"\"{params.model.path}\", subfolder=\"transformer\")")
    return head + f"""
```python
from diffusers import {pipeline}, {model}
pipe = {pipeline}.from_pretrained("{params.model.path}", boundary_ratio={ratio:.7f}{second})
pipe.load_lora_weights("{out_dir}", weight_name="{SEMANTIC_LORA_FILE}", adapter_name="semantic")
pipe.load_lora_weights("{out_dir}", weight_name="{LORA_FILE}", adapter_name="detail", load_into_transformer_2=True)
video = pipe("a cat surfing a wave", num_inference_steps=4, guidance_scale=1.0).frames[0]
```

{"The teacher's own two experts hold the two LoRAs." if two else "A one-transformer teacher: a second copy of its transformer holds the detail LoRA."}
`boundary_ratio` is the students' boundary sigma + {BOUNDARY_EPSILON:g}, so a step from exactly the
boundary runs the detail expert, as in dcm.
"""
