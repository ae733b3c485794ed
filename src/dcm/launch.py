"""Re-launch a heavy stage under ``accelerate launch`` when ``launch.*`` asks for it.

DVC runs ``python stages/<stage>.py``; with ``launch.num_processes > 1`` or a
``launch.config_file`` that script re-executes itself through the virtualenv's accelerate
(``sys.executable -m accelerate.commands.launch``), so one ``dvc repro`` drives several GPUs
without a second entry point. Everything is checked before any process starts.

CPU runs use accelerate's torchrun launcher with ``ACCELERATE_USE_CPU=true``: in accelerate
1.15 both ``--cpu`` and a ``MULTI_CPU`` config start a single process unless mpirun is installed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from dcm.config import Params, ParamsError

log = logging.getLogger(__name__)

#: variables every accelerate launcher (simple or torchrun) sets in the processes it starts
LAUNCHED_MARKERS = ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_MIXED_PRECISION")
GPU_ONLY = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


def launched_by_accelerate(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a process that accelerate (or torchrun) started: never launch again from there."""
    return any(name in env for name in LAUNCHED_MARKERS)


def fsdp_blocks(params: Params) -> list[str]:
    """The FSDP wrap classes of the configured backbone (:meth:`dcm.models.Backbone.fsdp_blocks`, from
    its structure on the meta device: no weights read)."""
    from dcm.models import backbone_class

    return list(backbone_class(params.model.backbone).skeleton(params.model).fsdp_blocks())


def launch_command(params: Params, script_argv: Sequence[str], gpus: int) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` argv for ``script_argv`` and the extra environment it needs.

    ``gpus`` is the number of CUDA devices here (0: a CPU run). Raises :class:`ParamsError`
    naming the ``launch.*`` key for a missing or unusable config or too many processes."""
    from accelerate.commands.config.config_args import load_config_from_file

    n, config_file = params.launch.num_processes, params.launch.config_file
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n)]
    kind, cpu = "MULTI_GPU", gpus == 0
    if config_file:
        path = Path(config_file).resolve()
        if not path.is_file():
            raise ParamsError(f"launch.config_file = {config_file!r}: no such file (looked at {path}); "
                              "see configs/README.md for the configs in this repository")
        try:
            config = load_config_from_file(str(path))
        except (ValueError, TypeError, KeyError) as err:
            raise ParamsError(f"launch.config_file = {config_file!r} is not a valid accelerate config: {err}") from None
        kind, cpu = config.distributed_type.value, cpu or config.use_cpu
        argv += ["--config_file", str(path)]
        if kind == "NO" and n > 1:
            raise ParamsError(f"launch.num_processes = {n} but launch.config_file = {config_file!r} runs one process "
                              "(distributed_type NO); use configs/accelerate/ddp.yaml or fsdp.yaml")
        if kind == "FSDP":
            argv += ["--fsdp_transformer_layer_cls_to_wrap", ",".join(fsdp_blocks(params))]
    if cpu and kind in GPU_ONLY:
        raise ParamsError(f"launch.config_file = {config_file!r} uses {kind}, which needs CUDA GPUs, and this run is "
                          "on CPU; use configs/accelerate/cpu_2proc.yaml (or no config file) for CPU processes")
    if not cpu and n > gpus:
        raise ParamsError(f"launch.num_processes = {n} but this machine has {gpus} CUDA GPU(s): allowed 1..{gpus} "
                          "(CPU runs, e.g. configs/accelerate/cpu_2proc.yaml, allow any count)")
    if n > 1 and not config_file:
        argv.append("--multi_gpu")  # accelerate's torchrun launcher; on CPU it runs gloo processes
    elif cpu and n == 1:
        argv.append("--cpu")
    return argv + list(script_argv), {"ACCELERATE_USE_CPU": "true"} if cpu else {}


def relaunch(params: Params, script_argv: Sequence[str] | None = None) -> None:
    """Re-execute this stage script under ``accelerate launch`` and exit with its return code, or
    return when ``launch.*`` asks for one plain process or this already is a launched process."""
    if launched_by_accelerate():
        return
    if params.launch.num_processes == 1 and not params.launch.config_file:
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    argv, env = launch_command(params, list(sys.argv if script_argv is None else script_argv), gpus)
    log.info("relaunching: %s", " ".join(argv))
    sys.exit(subprocess.call(argv, env={**os.environ, **env}))
