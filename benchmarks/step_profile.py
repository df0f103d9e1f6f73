"""Where a compute-alone training step spends its GPU time, to find what keeps it from the
matmul peak (issue #14): the step's kernels by kind (cuDNN convolutions, Triton kernels that
torch.compile fused, ...), the slowest kernels, and every convolution of the model alone, fwd +
bwd, with its FLOPs and the TFLOP/s it reaches, so an inefficient layer shows by name.

    python benchmarks/step_profile.py [--tasks smp,supervised] [--batch-size 32] [--preset paper]
        [--no-forms] [--no-layers]

On a CPU it runs too (slowly at the paper size: use --preset quick --batch-size 2).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from smp_lite.harness.accel import upsample_then_conv
from smp_lite.harness.runtime import Runtime, make_runtime
from smp_lite.tools.bench import bare_step, matmul_peak, synchronize, synthetic_batch, timed
from smp_lite.train import build_model, make_config, make_optimizer, make_step

KINDS = (  # first match wins; lower-case substrings of kernel names
    ("conv (cuDNN/CUTLASS)", ("conv", "xmma", "implicit_gemm", "cudnn", "wgrad", "dgrad", "fprop")),
    ("matmul", ("gemm", "cutlass", "cublas")),
    ("torch.compile fused (Triton)", ("triton",)),
    ("batch norm", ("batch_norm", "bn_")),
    ("layout/copy", ("copy", "nchw", "nhwc", "transpose", "permute")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KINDS if any(k in low for k in keys)), "other")


def profile_step(task: str, args: argparse.Namespace, peak: float) -> None:
    batch_size, steps = args.batch_size, args.steps
    cfg = make_config(task, args.preset, arch="r3d18", batch_size=batch_size)
    runtime = make_runtime("auto")
    torch.manual_seed(0)
    model = build_model(cfg, 101)
    if args.forms:  # with the forms of the convs cuDNN runs slowly, as training prepares it
        model = runtime.prepare(model)
    else:
        model = model.to(runtime.device, memory_format=torch.channels_last_3d)
    optimizer, step = make_optimizer(model, cfg), make_step(cfg, epoch=0)
    batch = runtime.to_device(synthetic_batch(cfg, 101))
    with FlopCounterMode(display=False) as counter:
        bare_step(model, batch, step, optimizer, runtime)
    wrapped = runtime.wrap(model)
    # after 3 calls that compile and autotune cuDNN
    wall_ms = (
        timed(lambda: bare_step(wrapped, batch, step, optimizer, runtime), steps, runtime, 3) * 1e3
    )
    cuda = [ProfilerActivity.CUDA] if runtime.device.type == "cuda" else []
    activities = [ProfilerActivity.CPU, *cuda]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            bare_step(wrapped, batch, step, optimizer, runtime)
        synchronize(runtime)
    flops_per_s = counter.get_total_flops() / wall_ms * 1e3
    print(
        f"\n== {task} r3d18, batch {batch_size}, {cfg.clip_len}x{cfg.crop}x{cfg.crop}, "
        f"compile={runtime.compile}: {wall_ms:.1f} ms a step, {batch_size / wall_ms * 1e3:.1f} "
        f"clips/s, {flops_per_s / 1e12:.1f} TFLOP/s = {100 * flops_per_s / peak:.1f}% of peak"
    )
    print_kernels(prof, runtime, steps, wall_ms, args.top)
    if args.layers:
        print_conv_layers(model, batch, step, runtime)


def print_kernels(prof, runtime: Runtime, steps: int, wall_ms: float, top: int) -> None:
    cuda = runtime.device.type == "cuda"
    events = [e for e in prof.key_averages() if (e.device_type.name == "CUDA") == cuda]
    if not cuda:  # on a CPU the top-level aten ops stand in for kernels
        events = [e for e in events if e.key.startswith("aten::")]
    times = {e.key: e.self_device_time_total if cuda else e.self_cpu_time_total for e in events}
    busy = sum(times.values()) / steps / 1e3
    by_kind: dict[str, float] = {}
    for name, us in times.items():
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + us / steps / 1e3
    print(f"kernel time {busy:.1f} ms a step ({100 * busy / wall_ms:.0f}% of the wall time)")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:32s} {ms:8.2f} ms  {100 * ms / busy:5.1f}%")
    print(f"top {top} kernels, ms a step:")
    for name, us in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {us / steps / 1e3:8.2f}  {kind_of(name)[:6]:6s}  {name[:110]}")


def print_conv_layers(model: nn.Module, batch: dict, step, runtime: Runtime) -> None:
    """Each convolution of the model timed alone, fwd + bwd (input gradient too, except the
    stem's), on its input shape in the step: which layers run far from the peak."""
    inputs: dict[str, torch.Size] = {}

    def record(name: str):
        def hook(module, args, out) -> None:  # returns None: the output stays as it is
            inputs.setdefault(name, args[0].shape)

        return hook

    hooks = [
        m.register_forward_hook(record(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)
    ]
    with runtime.autocast():
        step(model, batch)
    for h in hooks:
        h.remove()
    modules = dict(model.named_modules())
    total_ms = 0.0
    print("each convolution alone, fwd+bwd: ms, GFLOP, TFLOP/s, input shape")
    for name, shape in inputs.items():
        ms, flops = time_conv(modules[name], shape, runtime, input_grad=shape[1] != 3)
        total_ms += ms
        conv = modules[name]
        print(
            f"  {ms:7.2f} {flops / 1e9:8.1f} {flops / ms / 1e9:7.1f}  {name} "
            f"{type(conv).__name__}({conv.in_channels},{conv.out_channels},k={conv.kernel_size},"
            f"s={conv.stride}) on {tuple(shape)}"
        )
    print(f"  {total_ms:7.2f} ms all convolutions alone")


def time_conv(
    conv: nn.Module, shape: tuple, runtime: Runtime, input_grad: bool, reps: int = 5, layout=None
) -> tuple[float, int]:
    """(ms, FLOPs) of `conv` forward and backward on a random input of `shape`."""
    layout = layout or (
        torch.channels_last_3d if runtime.channels_last else torch.contiguous_format
    )
    x = torch.randn(shape, device=runtime.device).contiguous(memory_format=layout)
    x.requires_grad_(input_grad)

    def run() -> None:
        with runtime.autocast():
            y = conv(x)
        y.backward(torch.ones_like(y))

    with FlopCounterMode(display=False) as counter:
        run()  # torch.compile's first call compiles here
    return timed(run, reps, runtime) * 1e3, counter.get_total_flops()


def decoder_alternatives(batch_size: int, clip_len: int, crop: int, runtime: Runtime) -> None:
    """The decoder's last two linear layers, ConvTranspose3d(64, 64, 2, stride 2) and
    Conv3d(64, 3, 3) at full size, where the SMP step lost most (docs/benchmarks.md, "On a
    GPU"): one after the other (in channels_last and in NCDHW) against the one composed
    transposed conv the decoder now runs (`accel.upsample_then_conv`), eager and compiled.
    (Measured before and dropped: padding the 3 channels to 8 or 16; the transposed conv as a
    matmul and a copy; the 3-channel conv as a sum of taps.)"""
    shape = (batch_size, 64, clip_len, crop // 2, crop // 2)
    pair = nn.Sequential(nn.ConvTranspose3d(64, 64, 2, stride=2), nn.Conv3d(64, 3, 3, padding=1))
    pair = pair.to(runtime.device)
    composed = UpsampleThenConv(pair[0], pair[1])
    print(f"decoder alternatives, fwd+bwd ms, on {shape}:")
    rows = [
        ("one after the other, channels_last", pair, None),
        ("one after the other, NCDHW", pair, torch.contiguous_format),
        ("composed", composed, None),
        ("one after the other, compiled", torch.compile(pair), None),
        ("composed, compiled", torch.compile(composed), None),
    ]
    for name, module, layout in rows:
        print(f"  {time_conv(module, shape, runtime, True, layout=layout)[0]:7.2f}  {name}")


class UpsampleThenConv(nn.Module):
    def __init__(self, up: nn.ConvTranspose3d, conv: nn.Conv3d):
        super().__init__()
        self.up, self.conv = up, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_then_conv(x, self.up, self.conv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="smp,supervised")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument(
        "--forms",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the GPU forms of slow convs (accel.reform_cuda_convs)",
    )
    parser.add_argument(
        "--layers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time each conv alone, and the decoder's alternatives",
    )
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    peak = matmul_peak(make_runtime("auto"))
    print(f"matmul peak {peak / 1e12:.0f} TFLOP/s")
    for task in args.tasks.split(","):
        profile_step(task, args, peak)
    if args.layers:
        decoder_alternatives(args.batch_size, args.clip_len, args.crop, make_runtime("auto"))


if __name__ == "__main__":
    main()
