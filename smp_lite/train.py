"""Training: one loop for every task, with the task's loss plugged in.

Tasks (method.md sections 2-4):
- "prp": playback-rate perception: rate head on c5 + decoder reconstructing the 32-frame target,
  weighted by the difference motion mask (DPAU);
- "smp": PRP plus the convolution motion mask (CAM) blended with DPAU by a schedule, and
  multiple-granularity rate heads on c4, c3, c2;
- "supervised": action labels with cross-entropy.

`train(cfg)` runs on a CPU, one GPU or several under torchrun, and writes to `cfg.out`:
config.json, metrics.jsonl (one row per epoch), last.pt (every epoch and every `save_every`
steps) and best.pt (lowest validation loss), in one checkpoint format (checkpoint.py).
`resume` goes on from last.pt, mid-epoch too, to the same numbers an uninterrupted run gets;
Ctrl-C or SIGTERM stops between two steps after saving last.pt (docs/reliability.md).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric, Metric, SumMetric
from torchmetrics.classification import MulticlassAccuracy
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import (
    CHECKPOINT_FORMAT,
    check_compatible,
    check_out,
    config_dict,
    load_backbone,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    write_run_folder,
)
from .data import (
    RATES,
    DataError,
    EpochSampler,
    VideoDataset,
    load_index,
    rescale_per_map,
    split_by_group,
    to_float,
    upsample_mask,
)
from .errors import ConfigError, RunInterrupted, TrainError
from .models import ARCHS, ActionNet, MotionNet

TASKS = ("smp", "prp", "supervised")
LAMBDA_SCHEDULES = ("exp", "linear", "sigmoid", "dpau", "cam")

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    arch: str = "r3d18"
    task: str = "smp"
    data: str = "data/synth"
    split: int = 1
    out: str = ""  # empty: runs/<task>-<arch>-<dataset folder>
    preset: str = "quick"
    epochs: int = 6
    batch_size: int = 16
    lr: float = 0.01
    head_lr_scale: float = 10.0  # the rate heads' final Linear ("fc8") learns this much faster
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"  # plateau (PRP/SMP) or cosine with warm-up (supervised)
    warmup_epochs: int = 0
    plateau_patience: int = 50
    clip_len: int = 16
    resize: tuple[int, int] = (128, 171)
    crop: int = 112
    val_fraction: float = 0.1  # of the training groups, held out to pick best.pt
    precise_bn: int = 20  # training batches that recompute BatchNorm statistics each epoch end
    lam_schedule: str = "exp"
    mg: bool = True  # multiple-granularity rate heads (SMP)
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"  # auto, bf16, fp16, fp32
    channels_last: bool | None = None  # None: on where it pays (GPU, CPU with bf16)
    seed: int = 0
    limit_batches: int = 0  # >0: stop each epoch after this many batches (smoke runs)
    save_every: int = 100  # steps between mid-epoch saves of last.pt (0: at epoch ends only)
    init_from: str = ""  # checkpoint to initialise the backbone from (smp-lite or original code)
    resume: bool = False
    overwrite: bool = False


# Settings each preset fills in: "paper" is method.md; "quick" keeps a pretraining run on the
# generated dataset to minutes on 2 CPU cores (48x48 crops, 10 epochs: R3D-18 needs 5-7 to
# start learning the rate, README results).
PAPER_CLIPS = dict(clip_len=16, resize=(128, 171), crop=112)
QUICK_CLIPS = dict(clip_len=16, resize=(48, 64), crop=48)
PRESETS: dict[str, dict[str, dict]] = {
    "paper": {
        "motion": PAPER_CLIPS | dict(epochs=300, batch_size=8, lr=0.01, schedule="plateau"),
        "supervised": PAPER_CLIPS
        | dict(epochs=300, batch_size=32, lr=0.1, schedule="cosine", warmup_epochs=5),
    },
    "quick": {
        "motion": QUICK_CLIPS | dict(epochs=10, batch_size=8, lr=0.01, schedule="plateau"),
        "supervised": QUICK_CLIPS
        | dict(epochs=10, batch_size=8, lr=0.05, schedule="cosine", warmup_epochs=1),
    },
}


def make_config(task: str = "smp", preset: str | None = None, **overrides) -> TrainConfig:
    """A config from a preset (default: quick on generated data, paper on real data) and
    explicit overrides; an override of None keeps the preset's value."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    data = str(overrides.get("data", TrainConfig.data))
    preset = preset or ("quick" if is_generated(data) else "paper")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    values = PRESETS[preset]["supervised" if task == "supervised" else "motion"] | overrides
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    cfg = TrainConfig(task=task, preset=preset, **values)
    validate(cfg)
    return cfg


def is_generated(data: str) -> bool:
    kind, sep, path = data.partition(":")
    return (
        kind == "synth" or (not sep and Path(data, "meta.json").is_file()) or data == "data/synth"
    )


def validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.arch in ARCHS, f"unknown architecture {cfg.arch!r}: choose one of {', '.join(ARCHS)}"),
        (cfg.epochs > 0, f"epochs must be positive, got {cfg.epochs}"),
        (cfg.batch_size > 0, f"batch size must be positive, got {cfg.batch_size}"),
        (cfg.lr > 0, f"learning rate must be positive, got {cfg.lr}"),
        (cfg.crop % 16 == 0, f"crop {cfg.crop} must be divisible by 16"),
        (
            cfg.clip_len >= 8 and cfg.clip_len % 8 == 0,
            f"clip length {cfg.clip_len} must be a multiple of 8",
        ),
        (cfg.crop <= min(cfg.resize), f"crop {cfg.crop} is larger than resize {cfg.resize}"),
        (0 <= cfg.val_fraction < 1, f"val fraction must be in [0, 1), got {cfg.val_fraction}"),
        (
            cfg.lam_schedule in LAMBDA_SCHEDULES,
            f"unknown lambda schedule {cfg.lam_schedule!r}: "
            f"choose one of {', '.join(LAMBDA_SCHEDULES)}",
        ),
        (cfg.precision in ("auto", "bf16", "fp16", "fp32"), f"unknown precision {cfg.precision!r}"),
        (cfg.schedule in ("plateau", "cosine"), f"unknown lr schedule {cfg.schedule!r}"),
        (cfg.save_every >= 0, f"save every must be 0 or more steps, got {cfg.save_every}"),
        (cfg.precise_bn >= 0, f"precise BN must be 0 or more batches, got {cfg.precise_bn}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def default_out(cfg: TrainConfig) -> Path:
    data_name = Path(cfg.data.partition(":")[2] or cfg.data).name or "data"
    return Path("runs") / f"{cfg.task}-{cfg.arch}-{data_name}"


# ---------------------------------------------------------------------------------------------
# Motion masks and the lambda schedule (SMP, method.md section 3)


def motion_mask_cam(
    fc_weight: torch.Tensor, rate_map: torch.Tensor, rate: torch.Tensor, size: tuple[int, int, int]
) -> torch.Tensor:
    """Convolution motion attention: the class-activation map of the ground-truth rate.

    fc_weight (4, C) and rate_map (B, C, t, h, w) are detached; returns (B, 3, *size) in
    [0.8, 2.0], normalised per time slice.
    """
    w = fc_weight.detach().float()[rate]  # (B, C)
    cam = torch.einsum("bc,bcthw->bthw", w, rate_map.detach().float())  # (B, t, h, w)
    b, t, h, wd = cam.shape
    cam = rescale_per_map(cam.reshape(b, t, h * wd)).view(b, 1, t, h, wd)
    return upsample_mask(cam, size).expand(-1, 3, -1, -1, -1)


def blend_lambda(schedule: str, epoch: int, total: int) -> float:
    """Weight of the CAM mask at 1-based `epoch` of `total` (DPAU gets 1 - lambda)."""
    if schedule == "exp":
        scale = 75.0 if total > 100 else 25.0
        return math.exp((epoch - total) / scale)
    if schedule == "linear":
        return epoch / total
    if schedule == "sigmoid":
        return 1.0 / (1.0 + math.exp(-10.0 * (epoch / total - 0.5)))
    if schedule == "dpau":
        return 0.0
    if schedule == "cam":
        return 1.0
    raise ValueError(f"unknown lambda schedule {schedule!r}")


# ---------------------------------------------------------------------------------------------
# Task losses: each returns (loss, {loss term: value}, {head: (logits, labels)})

StepOutput = tuple[
    torch.Tensor, dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]
]
HEAD_NAMES = ("rate_c5", "rate_c4", "rate_c3", "rate_c2")


def motion_step(model: nn.Module, batch: dict, cfg: TrainConfig, epoch: int) -> StepOutput:
    clip = to_float(batch["clip"])  # (B, 3, T, H, W)
    target = to_float(batch["target"])  # (B, 3, 2T, H, W)
    rate = batch["rate"]
    out = model(clip)
    size = tuple(target.shape[2:])
    mask = upsample_mask(batch["dpau"].float(), size)  # (B, 3, 2T, H, W)
    if cfg.task == "smp":
        lam = blend_lambda(cfg.lam_schedule, epoch + 1, cfg.epochs)
        if lam > 0:
            head = unwrap(model).rate_heads[0]
            cam = motion_mask_cam(head.fc.weight, out["rate_map"], rate, size)
            mask = lam * cam + (1 - lam) * mask
    weight = batch["target_weight"][:, None, :, None, None]  # (B, 1, 2T, 1, 1) supervised frames
    sq_err = (out["recon"].float() - target).pow(2) * mask * weight
    recon = sq_err.sum() / (weight.sum() * 3 * size[1] * size[2]).clamp_min(1)
    ces = [F.cross_entropy(logits.float(), rate) for logits in out["logits"]]
    loss = recon + 0.1 * ces[0]
    terms = {"recon": recon.detach(), "ce": ces[0].detach()}
    if len(ces) > 1:  # multiple granularity: the c4, c3, c2 heads share one 0.1 weight
        ce_mg = torch.stack(ces[1:]).mean()
        loss = loss + 0.1 * ce_mg
        terms["ce_mg"] = ce_mg.detach()
    heads = {
        name: (logits.detach(), rate)
        for name, logits in zip(HEAD_NAMES, out["logits"], strict=False)
    }
    return loss, terms, heads


def supervised_step(model: nn.Module, batch: dict, cfg: TrainConfig, epoch: int) -> StepOutput:
    logits = model(to_float(batch["clip"]))
    loss = F.cross_entropy(logits.float(), batch["label"])
    return loss, {"ce": loss.detach()}, {"action": (logits.detach(), batch["label"])}


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    if cfg.task == "supervised":
        return ActionNet(cfg.arch, num_classes)
    return MotionNet(cfg.arch, mg=cfg.task == "smp" and cfg.mg, decoder=True)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------
# Devices and precision


@dataclass(frozen=True)
class Runtime:
    """Where a run computes: the device, its precision and memory layout, and the DDP rank."""

    device: torch.device
    precision: str  # bf16, fp16 or fp32
    channels_last: bool
    rank: int = 0
    world: int = 1

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
        """The model on the device, in the memory layout, with the CPU bf16 conv guard."""
        model = model.to(self.device)
        if self.device.type == "cpu" and self.precision == "bf16":
            guard_cpu_bf16_conv3d(model)
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


def make_runtime(
    device: str = "auto", precision: str = "auto", channels_last: bool | None = None
) -> Runtime:
    """The runtime for these settings ("auto": GPU if present, bf16 where it pays, channels_last
    on a GPU or with bf16); joins the process group under torchrun."""
    rank, world, local_rank = init_distributed()
    dev = pick_device(device, local_rank)
    prec = pick_precision(precision, dev)
    if channels_last is None:
        channels_last = dev.type == "cuda" or prec == "bf16"
    return Runtime(dev, prec, channels_last, rank, world)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """bf16 autocast pays on a CPU only with native bf16 units (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def guard_cpu_bf16_conv3d(model: nn.Module) -> nn.Module:
    """Run 3D convs over depth-2 inputs in fp32 when bf16 autocast is on the CPU.

    PyTorch 2.14 with oneDNN computes garbage bf16 weight gradients (relative error ~1, up to
    1e34) for a Conv3d with temporal kernel > 1 and temporal stride 1 over an input of depth 2,
    which a 16-frame clip meets at c5 (docs/benchmarks.md). Those layers are tiny (c5 is
    2 x H/16 x W/16), so computing just them in fp32 keeps bf16's speed. State dicts are unchanged.
    """
    for conv in model.modules():
        if isinstance(conv, nn.Conv3d) and conv.kernel_size[0] > 1 and conv.stride[0] == 1:
            conv.forward = types.MethodType(conv3d_fp32_at_depth2, conv)
    return model


def conv3d_fp32_at_depth2(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    if x.shape[2] == 2 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return nn.Conv3d.forward(conv, x.float())
    return nn.Conv3d.forward(conv, x)


# ---------------------------------------------------------------------------------------------
# The loop


class EpochMeter:
    """Clip-weighted means of the loss terms, the accuracy of each head and the number of clips
    over one epoch, as torchmetrics metrics (computing them reduces over DDP ranks).

    `state` holds the metrics' states reduced over ranks, for a mid-epoch checkpoint; loaded on
    rank 0 of a resumed run, they make the epoch end with the numbers an uninterrupted one gets.
    """

    def __init__(self, device: torch.device, world: int = 1):
        self.device, self.world = device, world
        self.metrics: dict[str, Metric] = {}

    def metric(self, name: str, num_classes: int = 0) -> Metric:
        """The metric `name`, created on first use: accuracy over `num_classes`, else a mean
        (a sum for "clips")."""
        if name not in self.metrics:
            if num_classes:
                metric = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
            else:
                metric = SumMetric() if name == "clips" else MeanMetric()
                metric.set_dtype(torch.float64)
            metric.persistent(True)  # states go into state_dict, hence into checkpoints
            self.metrics[name] = metric.to(self.device)
        return self.metrics[name]

    def update(self, loss: torch.Tensor, terms: dict, heads: dict) -> None:
        n = next(iter(heads.values()))[1].shape[0]  # clips in the batch
        self.metric("clips").update(n)
        for name, value in {"loss": loss.detach(), **terms}.items():
            self.metric(name).update(value.double(), n)
        for name, (logits, labels) in heads.items():
            self.metric(f"acc_{name}", logits.shape[1]).update(logits, labels)

    def compute(self, prefix: str) -> dict[str, float]:
        with warnings.catch_warnings():  # metrics of a resumed epoch may be loaded, not updated
            warnings.filterwarnings("ignore", "The ``compute`` method of metric")
            row = {f"{prefix}_{name}": m.compute().item() for name, m in self.metrics.items()}
        row[f"{prefix}_clips"] = int(row[f"{prefix}_clips"])
        return row

    def state(self) -> dict[str, dict]:
        """{name: {"classes": C (0: not an accuracy), "state": tensors}}; a collective call."""
        state = {}
        for name, m in self.metrics.items():
            with m.sync_context(should_sync=self.world > 1):
                tensors = {k: v.cpu() for k, v in m.state_dict().items()}
            state[name] = {"classes": getattr(m, "num_classes", 0), "state": tensors}
        return state

    def load(self, state: dict[str, dict], values: bool = True) -> None:
        """Recreate the metrics of a saved `state`, with its values or (values=False: the
        ranks but 0 of a resumed run, whose sums were added into rank 0's) at zero."""
        for name, saved in state.items():
            metric = self.metric(name, saved["classes"])
            if values:
                metric.load_state_dict(saved["state"])


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) one training run; returns the final metrics row plus the run's paths.

    Ctrl-C or SIGTERM stops the run between two steps, after saving last.pt, by raising
    RunInterrupted (a KeyboardInterrupt).
    """
    validate(cfg)
    rt = make_runtime(cfg.device, cfg.precision, cfg.channels_last)
    device, world, is_main = rt.device, rt.world, rt.is_main
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    check_out(out, cfg)  # refusals come before anything is read or written

    index = load_index(cfg.data, cfg.split)
    train_videos, val_videos = split_by_group(index.train, cfg.val_fraction, cfg.seed)
    mode = "clip" if cfg.task == "supervised" else "prp"
    common = dict(mode=mode, clip_len=cfg.clip_len, resize=cfg.resize, crop=cfg.crop, seed=cfg.seed)
    train_set = VideoDataset(train_videos, train=True, **common)
    # validation of a motion task plays every held-out video at every rate: balanced, 4x the clips
    val_views = len(RATES) if mode == "prp" else 1
    val_set = VideoDataset(val_videos, train=False, views=val_views, **common)
    train_sampler = EpochSampler(len(train_set), cfg.seed, True, rt.rank, world)
    train_loader = make_loader(train_set, train_sampler, cfg, device, drop_last=True)
    epoch_batches = min(len(train_loader), cfg.limit_batches or len(train_loader))
    # BN statistics are recomputed on other training clips than the epoch's (another seed)
    bn_sampler = EpochSampler(len(train_set), cfg.seed + 1, True, rt.rank, world)
    bn_loader = make_loader(train_set, bn_sampler, cfg, device, drop_last=True)
    bn_batches = min(cfg.precise_bn, cfg.limit_batches or cfg.precise_bn)
    val_loader = None
    if val_videos:  # the same clips every epoch: fixed keys (item, 0), no shuffling
        val_loader = make_loader(
            val_set,
            EpochSampler(len(val_set), cfg.seed, False, rt.rank, world),
            cfg,
            device,
            drop_last=False,
        )

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(index.classes))
    if cfg.init_from and not cfg.resume:
        load_backbone(model, cfg.init_from, cfg.arch)
    model = rt.prepare(model)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=rt.precision == "fp16")
    step_fn: Callable[..., StepOutput] = (
        supervised_step if cfg.task == "supervised" else motion_step
    )

    # where the run stands: `batches_done` batches of epoch `start_epoch` (0-based) are done
    start_epoch, batches_done, step, best_val, skipped = 0, 0, 0, math.inf, set()
    resumed_meter: dict[str, dict] = {}
    if cfg.resume:
        state = load_checkpoint(out / "last.pt")
        check_compatible(state, cfg, index.classes, out / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step, best_val = state["epoch"], state["step"], state["best_val"]
        batches_done, resumed_meter = state.get("batches_done", 0), state.get("meter", {})
        skipped = set(state["skipped_videos"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
    if is_main:
        write_run_folder(out, cfg, start_epoch)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def run_state(epoch: int, batches: int, meter_state: dict, metrics: dict) -> dict:
        """Everything a resumed run needs to go on as this one would: `epoch` epochs and
        `batches` batches of the next are done."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            "arch": cfg.arch,
            "task": cfg.task,
            "config": config_dict(cfg),
            "classes": list(index.classes),
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "batches_done": batches,
            "meter": meter_state,
            "step": step,
            "best_val": best_val,
            "metrics": metrics,
            "skipped_videos": sorted(skipped),
            "rng_cpu": torch.get_rng_state(),
            **({"rng_cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
        }

    def save_mid_epoch(epoch: int, meter: EpochMeter) -> None:
        meter_state = meter.state()  # on every rank: a collective under DDP
        if is_main:
            save_checkpoint(out / "last.pt", run_state(epoch, batches_done, meter_state, {}))

    row: dict = {}
    with stop_on_signals() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            # the sampler skips within this rank's shard: batches_done batches of batch_size keys,
            # so a resumed epoch decodes no sample twice and its batches are the same as before
            train_sampler.set_epoch(epoch, skip=batches_done * cfg.batch_size)
            meter = EpochMeter(device, world)
            if batches_done:  # every rank needs the metrics for the collective compute
                meter.load(resumed_meter, values=is_main)
            model.train()
            n_clips, t0 = 0, time.perf_counter()
            bar = tqdm(
                itertools.islice(train_loader, epoch_batches - batches_done),
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                total=epoch_batches,
                initial=batches_done,
                disable=not (progress and is_main),
                leave=False,
                dynamic_ncols=True,
            )
            for batch in bar:
                skipped |= note_skipped(batch, skipped, is_main)
                batch = rt.to_device(batch)
                with rt.autocast():
                    loss, terms, heads = step_fn(model, batch, cfg, epoch)
                if not torch.isfinite(loss):
                    last = out / "last.pt"
                    saved = f"last good checkpoint: {last}" if last.is_file() else "nothing saved"
                    raise TrainError(
                        f"loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}, "
                        f"batch {batches_done + 1}): stopped; {saved}"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if cfg.schedule == "cosine":
                    scheduler.step()
                step += 1
                batches_done += 1
                n_clips += batch["clip"].shape[0] * world
                meter.update(loss, terms, heads)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if stop_requested(stop, rt):
                    save_mid_epoch(epoch, meter)
                    raise RunInterrupted(out / "last.pt")
                if cfg.save_every and step % cfg.save_every == 0 and batches_done < epoch_batches:
                    save_mid_epoch(epoch, meter)
            elapsed = time.perf_counter() - t0
            if bn_batches:  # before validation and saving: both should see the current weights
                bn_sampler.set_epoch(epoch)
                clips = training_clips(bn_loader, bn_batches, rt, skipped)
                recompute_bn_stats(unwrap(model), clips, rt)
            row = {
                "epoch": epoch + 1,
                "step": step,
                "lr": optimizer.param_groups[0]["lr"],
                "clips_per_s": n_clips / max(elapsed, 1e-9),
                **meter.compute("train"),
            }
            if val_loader is not None:
                val_row = evaluate(model, val_loader, step_fn, cfg, epoch, rt, stop, skipped)
                if val_row is None:  # stopped during validation: the epoch's training is saved
                    save_mid_epoch(epoch, meter)
                    raise RunInterrupted(out / "last.pt")
                row |= val_row
            val_loss = row.get("val_loss", row["train_loss"])
            if cfg.schedule == "plateau":
                scheduler.step(val_loss)
            row["skipped_videos"] = len(skipped)
            is_best = val_loss < best_val
            best_val = min(best_val, val_loss)
            batches_done = 0
            if is_main:
                # metrics first and last.pt last: a kill in between repeats the epoch on resume,
                # which then drops the epoch's row and rewrites best.pt
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                state = run_state(epoch + 1, 0, {}, row)
                if is_best:
                    save_checkpoint(out / "best.pt", state)
                save_checkpoint(out / "last.pt", state)
                if progress:
                    tqdm.write(format_row(row))
    if world > 1:
        dist.destroy_process_group()
    return {**row, "out": str(out), "best_val": best_val}


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """While training, SIGINT (Ctrl-C) and SIGTERM set an event the loop checks after each step,
    so it stops at a step boundary with everything saved; a second Ctrl-C stops at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be set from the main thread
        return

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_requested(stop: threading.Event, rt: Runtime) -> bool:
    if rt.world == 1:
        return stop.is_set()
    flag = torch.tensor(float(stop.is_set()), device=rt.device)  # any rank stopping stops them all
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    step_fn: Callable[..., StepOutput],
    cfg: TrainConfig,
    epoch: int,
    rt: Runtime,
    stop: threading.Event,
    skipped: set[str],
) -> dict | None:
    """The validation metrics row, or None when a stop was requested; videos the loader skipped
    are added to the set `skipped`."""
    model.eval()
    meter = EpochMeter(rt.device, rt.world)
    with torch.no_grad():
        for batch in itertools.islice(loader, cfg.limit_batches or None):
            skipped |= note_skipped(batch, skipped, rt.is_main)
            batch = rt.to_device(batch)
            with rt.autocast():
                meter.update(*step_fn(model, batch, cfg, epoch))
            if stop_requested(stop, rt):
                return None
    return meter.compute("val")


def recompute_bn_stats(model: nn.Module, clips: Iterable[torch.Tensor], rt: Runtime) -> None:
    """Precise BatchNorm: replace the running statistics by the mean and variance of each BN
    layer's input over `clips` at the current weights, averaged over DDP ranks.

    The running averages mix batches seen under many past weights; while the weights change
    fast, evaluation with them can cost 20-30 points of validation accuracy (README, results).
    Weights are untouched. Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021.
    """
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad(), rt.autocast():
        for clip in clips:
            model(clip)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
        if rt.world > 1:
            for stat in (bn.running_mean, bn.running_var):
                dist.all_reduce(stat)
                stat /= rt.world


def training_clips(
    loader: DataLoader, batches: int, rt: Runtime, skipped: set[str]
) -> Iterator[torch.Tensor]:
    """The clips of the loader's first `batches` batches, on the device, as floats; videos the
    loader skipped are added to `skipped`."""
    for batch in itertools.islice(loader, batches):
        skipped |= note_skipped(batch, skipped, rt.is_main)
        yield to_float(rt.to_device(batch)["clip"])


def make_loader(
    dataset: VideoDataset,
    sampler: EpochSampler,
    cfg: TrainConfig,
    device: torch.device,
    drop_last: bool,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=drop_last and len(sampler) >= cfg.batch_size,
        worker_init_fn=quiet_worker,
    )


def quiet_worker(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the training step for cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process to handle


def note_skipped(batch: dict, seen: set[str], is_main: bool) -> set[str]:
    """Videos the loader skipped in this batch; each is logged once, by name."""
    new = {line for text in batch.pop("skipped") for line in text.splitlines() if line} - seen
    if is_main:
        for line in sorted(new):
            tqdm.write(f"skipped unreadable video {line}", file=sys.stderr)
    return new


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD; the rate heads' final Linear ("fc8" in the original) learns head_lr_scale faster."""
    fast = [p for n, p in model.named_parameters() if n.startswith("rate_heads.") and ".fc." in n]
    fast_ids = {id(p) for p in fast}
    base = [p for p in model.parameters() if id(p) not in fast_ids]
    groups = [{"params": base, "lr": cfg.lr}]
    if fast:
        groups.append({"params": fast, "lr": cfg.lr * cfg.head_lr_scale})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.1, patience=cfg.plateau_patience
        )
    steps = max(1, cfg.limit_batches or steps_per_epoch)
    warmup, total = cfg.warmup_epochs * steps, cfg.epochs * steps

    def warmup_cosine(step: int) -> float:  # linear warm-up to lr, then cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def format_row(row: dict) -> str:
    keys = [
        "epoch",
        "train_loss",
        "val_loss",
        "train_acc_rate_c5",
        "val_acc_rate_c5",
        "train_acc_action",
        "val_acc_action",
        "clips_per_s",
    ]
    return "  ".join(
        f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}"
        for k in keys
        if k in row
    )


__all__ = [
    "ConfigError",
    "DataError",
    "RunInterrupted",
    "TrainConfig",
    "TrainError",
    "load_backbone",
    "load_checkpoint",
    "make_config",
    "read_metrics",
    "save_checkpoint",
    "train",
]
