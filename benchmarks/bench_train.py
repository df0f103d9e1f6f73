"""Training-step throughput of each backbone's SMP model, and the CPU bf16 conv3d check.

    python benchmarks/bench_train.py --archs r3d18,c3d --size 48 --batch 8

Prints clips/s of one SGD step (forward, backward, update; no data loading; the decoder composed
as in training) for fp32 and bf16 autocast (with smp-lite's depth-2 conv guard), and the relative
error of bf16 conv3d weight gradients against fp32 for inputs of depth 1..4, with and without
the guard.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from smp_lite.harness.accel import compose_upsample_convs, guard_cpu_bf16_conv3d
from smp_lite.models import MotionNet


def step_throughput(arch: str, size: int, batch: int, bf16: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = compose_upsample_convs(MotionNet(arch)).to(memory_format=torch.channels_last_3d)
    if bf16:
        guard_cpu_bf16_conv3d(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(batch, 3, 16, size, size).contiguous(memory_format=torch.channels_last_3d)
    times = []
    for _ in range(steps + 1):  # the first step warms oneDNN up and is not counted
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            loss = out["recon"].float().mean() + sum(z.float().mean() for z in out["logits"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return batch / (sum(times[1:]) / steps)


def conv3d_bf16_weight_grad_error(depth: int, guarded: bool) -> float:
    """Relative error of a bf16 Conv3d(64, 64, 3, padding=1) weight gradient against fp32."""
    torch.manual_seed(0)
    conv = nn.Conv3d(64, 64, 3, padding=1)
    x = torch.randn(4, 64, depth, 4, 4)
    grad_out = torch.randn(4, 64, depth, 4, 4)

    def weight_grad(bf16: bool) -> torch.Tensor:
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(x)
        (y.float() * grad_out).sum().backward()
        return conv.weight.grad.clone()

    reference = weight_grad(False)
    if guarded:
        guard_cpu_bf16_conv3d(conv)
    return ((weight_grad(True) - reference).norm() / reference.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="r3d18,c3d", help="comma-separated backbones")
    parser.add_argument("--size", type=int, default=48, help="crop side (clips are 16 frames)")
    parser.add_argument("--batch", type=int, default=8, help="clips per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\nbf16 conv3d weight-gradient relative error vs fp32 (64 channels, 4x4, batch 4)")
    print("| input depth | unguarded | guarded |\n|---|---|---|")
    for depth in (1, 2, 3, 4):
        plain = conv3d_bf16_weight_grad_error(depth, guarded=False)
        guarded = conv3d_bf16_weight_grad_error(depth, guarded=True)
        print(f"| {depth} | {plain:.3g} | {guarded:.3g} |")
    print(f"\nSMP training step, 16x{args.size}x{args.size} clips, batch {args.batch}, clips/s")
    print("| arch | fp32 | bf16 (guarded) |\n|---|---|---|")
    for arch in args.archs.split(","):
        fp32 = step_throughput(arch, args.size, args.batch, False, args.steps)
        bf16 = step_throughput(arch, args.size, args.batch, True, args.steps)
        print(f"| {arch} | {fp32:.2f} | {bf16:.2f} |", flush=True)


if __name__ == "__main__":
    main()
