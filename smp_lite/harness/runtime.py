"""Where a run computes: the device, its precision and memory layout, the DDP rank, and the
model the training steps call.

- `make_runtime` picks a `Runtime` from the settings ("auto": a GPU if there is one, bf16 where
  it pays, channels_last_3d on a GPU or with bf16, torch.compile on a GPU) and joins the process
  group under torchrun;
- `Runtime.prepare` puts a model on the device with the faster forms of its layers (accel.py),
  `Runtime.wrap` under DDP and torch.compile for training, `unwrap` gets the bare model back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from .accel import compose_upsample_convs, guard_cpu_bf16_conv3d, reform_cuda_convs


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
        """The model on the device, in the memory layout, with the faster forms of the same
        layers (accel.py): the decoder's composed upsampling, and the CPU bf16 conv guard or the
        compiled forms of the convs cuDNN runs slowly."""
        model = model.to(self.device)
        compose_upsample_convs(model)
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


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under `Runtime.wrap`'s torch.compile and DistributedDataParallel."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
