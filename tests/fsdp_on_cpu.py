"""Run one distillation stage in this torchrun process through accelerate's FSDP code path, on CPU.

accelerate turns every CPU launch into plain data parallelism (MULTI_CPU), so FSDP cannot be
asked for without GPUs. This harness initialises accelerate's shared state over gloo, then sets
it to FSDP with the plugin ``configs/accelerate/fsdp.yaml`` describes; every ``Accelerator()`` the
stage creates afterwards shares that state, so the trainer's FSDP branches run as on GPUs (full
shard, transformer-block units, full state dict, ``use_orig_params``), minus bf16, NCCL and
the initial weight broadcast.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_on_cpu.py STAGE fsdp|ddp
"""

import os
import sys

os.environ["ACCELERATE_USE_CPU"] = "true"

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, PartialState  # noqa: E402
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: E402

from dcm.config import load_params  # noqa: E402
from dcm.launch import fsdp_blocks  # noqa: E402
from dcm.stages.distill import run_distill  # noqa: E402

if __name__ == "__main__":
    stage, mode = sys.argv[1:3]
    params = load_params("params.yaml")
    Accelerator(cpu=True)  # the process group (gloo) and the shared state
    if mode == "fsdp":
        shared = PartialState()  # every AcceleratorState() copies these two from here
        shared.distributed_type = DistributedType.FSDP
        shared.device = torch.device("cpu")  # MULTI_CPU's "cpu:0" never equals the parameters' "cpu" in FSDP's check
        state = AcceleratorState()
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=1, sharding_strategy="FULL_SHARD", auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=fsdp_blocks(params),
            state_dict_type="FULL_STATE_DICT", use_orig_params=True, cpu_ram_efficient_loading=False,
            sync_module_states=False,  # its broadcast set-up asks for a GPU; every rank loads the same weights
        )
    run_distill(params, stage)
