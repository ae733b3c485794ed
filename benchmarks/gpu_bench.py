"""GPU figures: per-step latency and memory of the 50-step CFG teacher against the 4-step DCM student
at Wan2.1-1.3B size, and the inference memory of the PE detail expert against OD.

    python benchmarks/gpu_bench.py [--device cuda] [--repeats 5] [--warmup 2]
    python benchmarks/gpu_bench.py --device cpu --tiny      # the same code at toy size (smoke test)

A randomly initialised ``WanTransformer3DModel`` with the released Wan2.1-T2V-1.3B config (speed and
memory do not depend on the weights), in bf16, on latents of an 81x480x832 video. The teacher runs
the cond and uncond branches as one batch of 2 (as ``dcm.guidance.guided`` does); the DCM student
runs guidance 1 at batch 1: semantic steps on the base (PE adapters attached, switched off, as
``dcm.sampling.sample`` runs them) and detail steps with the PE expert fused into the base.
Latency is the median of ``--repeats`` CUDA-synchronised steps after ``--warmup``; memory is
``torch.cuda.max_memory_allocated`` over those steps (CUDA only).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import WanTransformer3DModel

from dcm.experts import ParameterEfficientExpert
from dcm.models.wan import WAN_TIMESTEP_LAYERS

#: Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json; 81x480x832 -> 21x60x104 latents (VAE 4x8x8)
WAN_1_3B = {"config": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                           out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                           cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
            "latent": (16, 21, 60, 104), "text_tokens": 512, "lora_rank": 128}
TINY = {"config": dict(WAN_1_3B["config"], num_attention_heads=2, attention_head_dim=16, in_channels=4,
                       out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2),
        "latent": (4, 3, 8, 8), "text_tokens": 16, "lora_rank": 4}
GiB = 2**30


class Bench:
    """Times transformer calls and reads peak memory on one device."""

    def __init__(self, device: torch.device, dtype: torch.dtype, spec: dict, warmup: int, repeats: int):
        self.device, self.dtype, self.spec, self.warmup, self.repeats = device, dtype, spec, warmup, repeats
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def transformer(self) -> WanTransformer3DModel:
        """bf16 except the modules Wan keeps in fp32, as ``from_pretrained(torch_dtype=bf16)`` loads it."""
        with torch.device(self.device):
            model = WanTransformer3DModel(**self.spec["config"]).eval().requires_grad_(False)
        keep = model._keep_in_fp32_modules or []
        for name, module in model.named_modules():
            if name and not any(k in name.split(".") for k in keep):
                module.to(self.dtype)
        return model

    def inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = torch.Generator(self.device).manual_seed(0)
        latents = torch.randn(batch, *self.spec["latent"], generator=gen, device=self.device, dtype=self.dtype)
        text = torch.randn(batch, self.spec["text_tokens"], self.spec["config"]["text_dim"], generator=gen,
                           device=self.device, dtype=self.dtype)
        return latents, torch.full((batch,), 500.0, device=self.device), text

    def seconds(self, fn: Callable[[], object]) -> tuple[float, float | None]:
        """Median seconds of ``fn`` after warm-up, and the peak bytes allocated while timing it."""
        for _ in range(self.warmup):
            fn()
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for _ in range(self.repeats):
            tick = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - tick)
        peak = torch.cuda.max_memory_allocated(self.device) if self.cuda else None
        return statistics.median(times), peak

    def step(self, model: torch.nn.Module, batch: int) -> tuple[float, float | None]:
        latents, t, text = self.inputs(batch)
        return self.seconds(lambda: model(latents, t, text, return_dict=False))


def size(n: float | None) -> str:
    if n is None:
        return "n/a (CPU)"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.2f} MiB"


def resident(module: torch.nn.Module) -> int:
    """Bytes of parameters and buffers held by ``module``."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy config (CPU smoke test)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--dcm-steps", type=int, default=4, help="even: half semantic, half detail")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" and not args.tiny:
        parser.error("the Wan2.1-1.3B size needs --device cuda; use --tiny to smoke-test on CPU")
    if args.dcm_steps % 2:
        parser.error("--dcm-steps must be even (the experts split the steps evenly)")
    spec = TINY if args.tiny else WAN_1_3B
    bench = Bench(device, torch.bfloat16, spec, args.warmup, args.repeats)
    torch.manual_seed(0)
    tokens = spec["latent"][1] * (spec["latent"][2] // 2) * (spec["latent"][3] // 2)
    where = torch.cuda.get_device_name(device) if bench.cuda else "cpu"
    print(f"config: WanTransformer3DModel {spec['config']}")
    print(f"latent {spec['latent']} -> {tokens:,} tokens, text {spec['text_tokens']} tokens; bf16 on {where}; "
          f"median of {args.repeats} after {args.warmup} warm-up; torch {torch.__version__}\n")

    with torch.inference_mode():
        model = bench.transformer()
        teacher, teacher_peak = bench.step(model, 2)
        rank = spec["lora_rank"]
        expert = ParameterEfficientExpert(model, WAN_TIMESTEP_LAYERS, rank, 2.0 * rank,
                                          ("to_q", "to_k", "to_v", "to_out.0"))
        pe_bytes = resident(expert)
        semantic, semantic_peak = bench.step(model, 1)

        with expert.fused() as fused:
            detail_s, detail_peak = bench.step(fused, 1)

        def switch() -> None:
            with expert.fused():
                pass

        switch_s, _ = bench.seconds(switch)
        del model, expert, fused
        if bench.cuda:
            torch.cuda.empty_cache()
        pair = [bench.transformer(), bench.transformer()]
        od_bytes = sum(resident(m) for m in pair)
        _, od_peak = bench.step(pair[1], 1)

    half = args.dcm_steps // 2
    teacher_video = args.teacher_steps * teacher
    dcm_video = half * semantic + half * detail_s + switch_s
    rows = [("teacher, CFG", 2, teacher, teacher_peak, args.teacher_steps, teacher_video),
            ("DCM semantic expert", 1, semantic, semantic_peak, half, half * semantic),
            ("DCM detail expert (PE fused)", 1, detail_s, detail_peak, half, half * detail_s),
            ("DCM expert switch (fuse+unfuse)", "-", switch_s, None, 1, switch_s)]
    print(f"{'':32} {'batch':>5} {'per step':>10} {'peak memory':>12} {'steps':>5} {'per video':>10}")
    for name, batch, per, peak, steps, video in rows:
        print(f"{name:32} {batch:>5} {per * 1e3:>8.2f}ms {size(peak) if peak else '':>12} {steps:>5} {video:>9.3f}s")
    print(f"{'DCM total':32} {'':>5} {'':>10} {'':>12} {args.dcm_steps:>5} {dcm_video:>9.3f}s")
    print(f"\nspeedup per video (transformer only, no text encoder / VAE): {teacher_video / dcm_video:.1f}x\n")
    print("inference memory of the two experts: weights resident / peak in a detail step")
    print(f"  PE: one transformer + LoRA r{rank} + copied timestep layers  {size(pe_bytes):>10} / {size(detail_peak)}")
    print(f"  OD: two full transformers                                 {size(od_bytes):>10} / {size(od_peak)}")


if __name__ == "__main__":
    main()
