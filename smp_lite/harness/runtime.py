"""Where a run computes: the device, its precision and memory layout, the DDP rank, and the
model the training steps call.

- `make_runtime` picks a `Runtime` from the settings ("auto": a GPU if there is one, bf16 where
  it pays, channels_last_3d on a GPU or with bf16, torch.compile on a GPU) and joins the process
  group under torchrun;
- `Runtime.prepare` puts a model on the device (with the CPU bf16 conv guard, or on a GPU the
  forms of two kinds of conv that cuDNN runs slowly), `Runtime.wrap` under DDP and
  torch.compile for training, `unwrap` gets the bare model back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """Where a run computes: the device, its precision and memory layout, and the DDP rank."""

    device: torch.device
    precision: str  # bf16, fp16 or fp32
    channels_last: bool
    rank: int = 0
    world: int = 1
    compile: bool = False  # the training model through torch.compile (`wrap`)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type,
            dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16,
            enabled=self.precision in ("bf16", "fp16"),
        )

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on the device, in the memory layout, with the CPU bf16 conv guard or the
        compiled forms of the convs cuDNN runs slowly."""
        model = model.to(self.device)
        if self.device.type == "cpu" and self.precision == "bf16":
            guard_cpu_bf16_conv3d(model)
        if self.device.type == "cuda":
            reform_cuda_convs(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        return model

    def to_device(self, batch: dict) -> dict:
        moved = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
                if self.channels_last and v.dim() == 5:
                    v = v.contiguous(memory_format=torch.channels_last_3d)
            moved[k] = v
        return moved

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model the training steps call: under DistributedDataParallel when there are
        several ranks, through torch.compile when `compile` is on. Evaluation, precise BatchNorm
        and checkpoints use the bare model (`unwrap`)."""
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return torch.compile(model) if self.compile else model


def make_runtime(
    device: str = "auto",
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool | None = None,
) -> Runtime:
    """The runtime for these settings ("auto": GPU if present, bf16 where it pays, channels_last
    on a GPU or with bf16, torch.compile on a GPU); joins the process group under torchrun."""
    dev = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    prec = pick_precision(precision, dev)
    if channels_last is None:
        channels_last = dev.type == "cuda" or prec == "bf16"
    if compile is None:  # it pays on a GPU, not on a CPU (docs/benchmarks.md)
        compile = dev.type == "cuda"
    if dev.type == "cuda":  # clips keep one size: cuDNN times its kernels once and keeps the best
        torch.backends.cudnn.benchmark = True
    rank, world = init_distributed(dev)
    return Runtime(dev, prec, channels_last, rank, world, compile)


def loader_workers(requested: int | None, runtime: Runtime) -> int:
    """`requested` loader processes, or the default: none on a CPU, where the training step
    already uses every core (workers there slow it, docs/benchmarks.md); on a GPU, all the
    rank's cores but one, at most 16."""
    if requested is not None:
        return requested
    if runtime.device.type != "cuda":
        return 0
    affinity = getattr(os, "sched_getaffinity", None)  # the cores this process may use (Linux)
    cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    return max(1, min(16, cores // runtime.world - 1))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun, with the backend of
    the device (NCCL for GPUs, gloo for CPUs: --device cpu on a GPU machine too)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The device `name` says (auto, cpu, cuda, cuda:N), checked against this machine; under
    torchrun, auto and cuda mean the rank's own GPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    count = torch.cuda.device_count()
    if not count:
        raise ConfigError(f"device {name!r}: PyTorch sees no CUDA GPU on this machine")
    index = local_rank if device.index is None else device.index
    if index >= count:
        raise ConfigError(
            f"device {name!r}: this machine has {count} GPUs, cuda:0 to cuda:{count - 1}"
        )
    return torch.device("cuda", index)


def pick_precision(precision: str, device: torch.device) -> str:
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError(
            "precision fp16 is for GPUs: on a CPU a training step runs hundreds of times slower "
            "than in fp32; use fp32, or bf16 on a CPU with AVX512-BF16 or AMX"
        )
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    """bf16 autocast pays on a CPU only with native bf16 units (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def guard_cpu_bf16_conv3d(model: nn.Module) -> nn.Module:
    """Make each 3D conv with temporal kernel > 1 and temporal stride 1 a `GuardedConv3d`:
    under bf16 autocast on the CPU it computes depth-2 inputs as one explicit bf16 matmul.

    PyTorch 2.14 with oneDNN computes garbage bf16 weight gradients (relative error ~1, up to
    1e34) for such a conv over an input of depth 2, which a 16-frame clip meets at c5
    (docs/benchmarks.md). A bf16 matmul computes them right, and faster than oneDNN's fp32
    conv, the first remedy tried. The model prints as what runs; state dicts are unchanged.
    """
    for conv in model.modules():
        if isinstance(conv, nn.Conv3d) and conv.kernel_size[0] > 1 and conv.stride[0] == 1:
            plain = conv.groups == 1 and conv.dilation == (1, 1, 1) and conv.padding_mode == "zeros"
            if not plain or isinstance(conv.padding, str):
                raise ValueError(f"the CPU bf16 conv guard handles plain convolutions, not {conv}")
            conv.__class__ = GuardedConv3d  # the same parameters, another forward
    return model


class GuardedConv3d(nn.Conv3d):
    """A Conv3d that computes a depth-2 input under CPU bf16 autocast as one bf16 matmul
    (`guard_cpu_bf16_conv3d`), and any other input as Conv3d does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] == 2 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            return conv3d_as_matmul(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


def conv3d_as_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
) -> torch.Tensor:
    """F.conv3d with groups 1, dilation 1 and zero padding, as im2col and one matmul."""
    pt, ph, pw = padding
    x = F.pad(x, (pw, pw, ph, ph, pt, pt))
    kt, kh, kw = weight.shape[2:]
    cols = x.unfold(2, kt, stride[0]).unfold(3, kh, stride[1]).unfold(4, kw, stride[2])
    b, _, t, h, w = cols.shape[:5]  # cols: (B, C, T', H', W', kt, kh, kw)
    cols = cols.permute(0, 2, 3, 4, 5, 6, 7, 1).reshape(b * t * h * w, -1)  # (BT'H'W', k*C)
    # (O, k*C) in the order of cols: a view, no copy, of a channels_last weight
    weights = weight.permute(0, 2, 3, 4, 1).reshape(len(weight), -1)
    out = cols @ weights.t()  # (BT'H'W', O)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.view(b, t, h, w, -1).permute(0, 4, 1, 2, 3)  # (B, O, T', H', W'), channels_last


# ---------------------------------------------------------------------------------------------
# The convolutions cuDNN runs far from the GPU's peak, in forms of the same sum that it runs well

ConvForm = Callable[..., torch.Tensor]  # (x, weight, bias, stride, padding) -> F.conv3d's output


def reform_cuda_convs(model: nn.Module) -> nn.Module:
    """Make each 3D conv that cuDNN runs far below the GPU's bf16 peak a `ReformedConv3d`:
    inside torch.compile's graph it computes another form of the same sum (`cuda_conv_form`;
    the step times: docs/benchmarks.md, "On a GPU"). Eager calls (evaluation, `--no-compile`)
    keep cuDNN's conv. The model prints as what runs; state dicts are unchanged."""
    for conv in model.modules():
        form = cuda_conv_form(conv) if isinstance(conv, nn.Conv3d) else None
        if form is not None:
            conv.__class__ = ReformedConv3d  # the same parameters, another forward
            conv.compiled_form = form
    return model


class ReformedConv3d(nn.Conv3d):
    """A Conv3d computed in `compiled_form` inside torch.compile's graph (`reform_cuda_convs`),
    as Conv3d does elsewhere."""

    compiled_form: ConvForm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self.compiled_form(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, compiled as {self.compiled_form.__name__}"


def cuda_conv_form(conv: nn.Conv3d) -> ConvForm | None:
    """The form for this conv, or None where cuDNN's own is kept: few input channels at
    spatial stride 2 (the ResNet stems, 3 -> 64), a strided pointwise conv (the residual
    shortcuts). Not the decoder's last conv (64 -> 3 at full size): as one pointwise conv to
    every kernel tap and a sum of the shifted taps it was slower (docs/benchmarks.md);
    `models.upsample_then_conv` composes it with the transposed conv before it instead."""
    plain = conv.groups == 1 and conv.dilation == (1, 1, 1) and conv.padding_mode == "zeros"
    if not plain or isinstance(conv.padding, str):
        return None
    if conv.in_channels < 8 and conv.stride[0] == 1 and conv.stride[1:] == (2, 2):
        return conv3d_space_to_depth
    if conv.kernel_size == (1, 1, 1) and conv.padding == (0, 0, 0) and conv.stride != (1, 1, 1):
        return conv3d_pointwise_strided
    return None


def conv3d_space_to_depth(x, weight, bias, stride, padding) -> torch.Tensor:
    """F.conv3d at spatial stride 2 as a stride-1 conv over 2x2 pixel blocks folded into the
    channels: (B, C, T, H, W) -> (B, 4C, T, H'', W''), the kernel padded to even size and folded
    the same way: a 3-channel stem, slow in cuDNN, gets 12 channels."""
    o, c, kt, kh, kw = weight.shape
    pt, ph, pw = padding
    b, _, t, h, w = x.shape
    qh, qw = (kh + 1) // 2, (kw + 1) // 2  # the kernel in blocks
    nh, nw = (h + 2 * ph - kh) // 2 + qh, (w + 2 * pw - kw) // 2 + qw  # the input in blocks
    x = F.pad(x, (pw, 2 * nw - w - pw, ph, 2 * nh - h - ph))  # (B, C, T, 2nh, 2nw)
    x = x.view(b, c, t, nh, 2, nw, 2).permute(0, 1, 4, 6, 2, 3, 5).reshape(b, 4 * c, t, nh, nw)
    weight = F.pad(weight, (0, 2 * qw - kw, 0, 2 * qh - kh))  # (O, C, kt, 2qh, 2qw)
    weight = weight.view(o, c, kt, qh, 2, qw, 2).permute(0, 1, 4, 6, 2, 3, 5)
    weight = weight.reshape(o, 4 * c, kt, qh, qw)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    return F.conv3d(x, weight, bias, (stride[0], 1, 1), (pt, 0, 0))


def conv3d_pointwise_strided(x, weight, bias, stride, padding) -> torch.Tensor:
    """A strided 1x1x1 conv as the subsampled input through a stride-1 one (cuDNN's strided
    pointwise conv reads the whole input)."""
    st, sh, sw = stride
    return F.conv3d(x[:, :, ::st, ::sh, ::sw], weight, bias)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under `Runtime.wrap`'s torch.compile and DistributedDataParallel."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
