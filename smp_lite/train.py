"""Pretraining: the task losses, the optimiser and `train()`; its config is config.py's.

Tasks (method.md sections 2-4):
- "prp": playback-rate perception: rate head on c5 + decoder reconstructing the 32-frame target,
  weighted by the difference motion mask (DPAU);
- "smp": PRP plus the convolution motion mask (CAM) blended with DPAU by a schedule, and
  multiple-granularity rate heads on c4, c3, c2;
- "supervised": action labels with cross-entropy.

`train(cfg)` runs on a CPU, one GPU or several under torchrun, and writes to its run folder:
config.json, metrics.jsonl (one row per epoch), last.pt (every epoch and every `save_every`
steps) and best.pt (lowest validation loss), in one checkpoint format (checkpoint.py).
`resume` goes on from last.pt, mid-epoch too, to the same numbers an uninterrupted run gets;
Ctrl-C or SIGTERM stops between two steps after saving last.pt (docs/reliability.md).
The loop itself, devices and metrics are the engine's (engine.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.wrappers import ClasswiseWrapper

from .checkpoint import load_backbone
from .config import (
    ARCHS,
    DEFAULT_DATA,
    LAMBDA_SCHEDULES,
    PRESETS,
    RATES,
    TASK_CROPS,
    TASKS,
    TrainConfig,
)
from .data import EpochSampler, VideoDataset, to_float
from .engine import (
    Run,
    StepFn,
    StepOutput,
    ensure_default_dataset,
    fit,
    hold_run_folder,
    loss_metrics,
    make_loader,
)
from .errors import ConfigError, DataError
from .folders import write_run_folder
from .index import load_index, split_by_group
from .masks import blend_lambda
from .models import NUM_RATES, ActionNet, MotionNet, build_backbone
from .runtime import Runtime, loader_workers, make_runtime

# best.pt and the plateau schedule follow the validation loss; for SMP it is taken under the
# DPAU mask alone, so that it means the same at every epoch (the training mask moves to CAM)
BEST_BY = "val_loss (SMP: under the DPAU mask alone, the same definition at every epoch)"
HEAD_NAMES = ("rate_c5", "rate_c4", "rate_c3", "rate_c2")

# ---------------------------------------------------------------------------------------------
# Configuration


def make_config(task: str | None = None, preset: str | None = None, **overrides) -> TrainConfig:
    """A config from a preset (default: quick on generated data, paper on real data) and
    explicit overrides; an override of None keeps the preset's value."""
    task = task or TrainConfig.task
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    overrides = as_settings(overrides)
    preset = preset or (
        "quick" if is_generated(overrides.get("data", TrainConfig.data)) else "paper"
    )
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    cfg = replace(PRESETS[preset][task == "supervised"], task=task, **overrides)
    cfg.train_crop = cfg.train_crop or TASK_CROPS[task]
    validate(cfg)
    return cfg


def as_settings(overrides: dict) -> dict:
    """The overrides that are set (None keeps the preset's), with paths as the strings a run's
    config.json holds: `data=Path(...)` works as `data="..."` does."""
    paths = ("data", "out", "init_from", "init")
    return {k: str(v) if k in paths else v for k, v in overrides.items() if v is not None}


def is_generated(data: str) -> bool:
    kind, sep, path = str(data).partition(":")
    return (
        kind == "synth" or data == DEFAULT_DATA or (not sep and Path(data, "meta.json").is_file())
    )


def validate(cfg: TrainConfig) -> None:
    """Refuse a setting no run can use (ConfigError, exit code 2) before anything is read."""
    h, w = cfg.resize
    checks = [
        (cfg.arch in ARCHS, f"unknown architecture {cfg.arch!r}: choose one of {', '.join(ARCHS)}"),
        (
            cfg.preset in PRESETS,
            f"unknown preset {cfg.preset!r}: choose one of {', '.join(PRESETS)}",
        ),
        (cfg.epochs > 0, f"epochs must be positive, got {cfg.epochs}"),
        (cfg.batch_size > 0, f"batch size must be positive, got {cfg.batch_size}"),
        # chained comparisons: NaN fails them all
        (0 < cfg.lr < math.inf, f"learning rate must be a positive number, got {cfg.lr}"),
        (
            0 < cfg.head_lr_scale < math.inf,
            f"head lr scale must be a positive number, got {cfg.head_lr_scale}",
        ),
        (0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum}"),
        (
            0 <= cfg.weight_decay < math.inf,
            f"weight decay must be 0 or more, got {cfg.weight_decay}",
        ),
        (
            cfg.crop > 0 and cfg.crop % 16 == 0,
            f"crop {cfg.crop} must be positive and divisible by 16",
        ),
        (h > 0 and w > 0, f"resize {h}x{w} must be positive"),
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
        (cfg.train_crop in ("", "random", "center"), f"unknown crop {cfg.train_crop!r}"),
        (cfg.warmup_epochs >= 0, f"warm-up epochs must be 0 or more, got {cfg.warmup_epochs}"),
        (
            cfg.plateau_patience >= 0,
            f"plateau patience must be 0 or more, got {cfg.plateau_patience}",
        ),
        (cfg.save_every >= 0, f"save every must be 0 or more steps, got {cfg.save_every}"),
        (cfg.precise_bn >= 0, f"precise BN must be 0 or more batches, got {cfg.precise_bn}"),
        (cfg.limit_batches >= 0, f"limit batches must be 0 or more, got {cfg.limit_batches}"),
        (cfg.clips_per_video >= 1, f"clips per video must be 1 or more: {cfg.clips_per_video}"),
        (cfg.workers is None or cfg.workers >= 0, f"workers must be 0 or more, got {cfg.workers}"),
        (cfg.split > 0, f"split must be positive, got {cfg.split}"),
        (0 <= cfg.seed < 2**32, f"seed must be in 0..{2**32 - 1}, got {cfg.seed}"),
        (not (cfg.resume and cfg.overwrite), "pass --resume or --overwrite, not both"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def config_dict(cfg: TrainConfig) -> dict:
    """The config as JSON-ready values (config.json, checkpoints)."""
    return {**asdict(cfg), "resize": list(cfg.resize)}


def default_out(cfg: TrainConfig) -> Path:
    """runs/TASK-ARCH-DATASET, with -lrLR and -seedN where they differ from the preset: the runs
    of a sweep over either get folders of their own."""
    data_name = Path(cfg.data.partition(":")[2] or cfg.data).name or "data"
    preset = PRESETS[cfg.preset][cfg.task == "supervised"]
    tags = [
        f"-{k}{getattr(cfg, k)}" for k in ("lr", "seed") if getattr(cfg, k) != getattr(preset, k)
    ]
    return Path("runs") / (f"{cfg.task}-{cfg.arch}-{data_name}" + "".join(tags))


# ---------------------------------------------------------------------------------------------
# Tasks: model, loss and metrics


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    if cfg.task == "supervised":
        return ActionNet(cfg.arch, num_classes)
    return MotionNet(cfg.arch, mg=cfg.task == "smp" and cfg.mg, decoder=True)


def motion_step(model: nn.Module, batch: dict, lam: float) -> StepOutput:
    """PRP/SMP: the model computes its loss (MotionNet.loss) with the CAM mask weighted `lam`."""
    targets = {k: batch[k] for k in ("target_weight", "dpau", "rate")}
    targets["target"] = to_float(batch["target"])  # (B, 3, 2T, H, W)
    out = model(to_float(batch["clip"]), targets, lam)
    heads = {name: (z, batch["rate"]) for name, z in zip(HEAD_NAMES, out["logits"], strict=False)}
    heads["at_rate"] = heads["rate_c5"]  # the c5 head's accuracy at each rate
    return out["loss"], out["terms"], heads


def supervised_step(model: nn.Module, batch: dict) -> StepOutput:
    logits = model(to_float(batch["clip"]))  # (B, classes)
    loss = F.cross_entropy(logits.float(), batch["label"])
    return loss, {"ce": loss.detach()}, {"action": (logits, batch["label"])}


def make_step(cfg: TrainConfig, epoch: int, training: bool = True) -> StepFn:
    """The step of the task at 0-based `epoch`: SMP's training mask moves from DPAU to CAM over
    the epochs; its validation keeps DPAU alone (BEST_BY)."""
    if cfg.task == "supervised":
        return supervised_step
    smp_training = cfg.task == "smp" and training
    lam = blend_lambda(cfg.lam_schedule, epoch + 1, cfg.epochs) if smp_training else 0.0
    return functools.partial(motion_step, lam=lam)


def task_metrics(cfg: TrainConfig, num_classes: int) -> MetricCollection:
    """The metrics of an epoch, declared up front: the means of the loss and its terms, the
    accuracy of each head, the number of clips."""
    if cfg.task == "supervised":
        terms, heads = ["ce"], {"action": num_classes}
    else:
        n_heads = len(HEAD_NAMES) if cfg.task == "smp" and cfg.mg else 1
        terms = ["recon", "ce"] + (["ce_mg"] if n_heads > 1 else [])
        heads = {name: NUM_RATES for name in HEAD_NAMES[:n_heads]}
    metrics = loss_metrics(terms)
    for name, classes in heads.items():
        metrics[f"acc_{name}"] = MulticlassAccuracy(classes, average="micro", validate_args=False)
    if cfg.task != "supervised":
        metrics["acc_at_rate"] = accuracy_at_rate()
    return MetricCollection(metrics, compute_groups=False)


def accuracy_at_rate() -> ClasswiseWrapper:
    """acc_at_rate_1, ..., acc_at_rate_8: the accuracy on the clips of each playback rate."""
    return ClasswiseWrapper(AccuracyPerClass(NUM_RATES), [str(r) for r in RATES], "acc_at_rate_")


class AccuracyPerClass(Metric):
    """The accuracy within each class (0 for a class not seen), as MulticlassAccuracy(average=
    "none") gives it, counted without its bincount, which waits for the GPU at every update."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros(num_classes), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_classes), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        classes = torch.arange(len(self.total), device=labels.device)
        of_class = (labels[:, None] == classes).to(self.total.dtype)  # (B, classes)
        self.total += of_class.sum(0)
        self.correct += (of_class * (logits.argmax(1) == labels)[:, None]).sum(0)

    def compute(self) -> torch.Tensor:
        return torch.where(self.total > 0, self.correct / self.total.clamp_min(1), 0.0)


# ---------------------------------------------------------------------------------------------
# Optimiser and learning-rate schedule


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
    """ReduceLROnPlateau on the validation loss (stepped per epoch), or a linear warm-up then
    cosine decay to 0 (stepped per batch)."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.1, patience=cfg.plateau_patience, min_lr=1e-7
        )
    steps = max(1, min(steps_per_epoch, cfg.limit_batches or steps_per_epoch))
    warmup = cfg.warmup_epochs * steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, warmup=warmup, total=cfg.epochs * steps)
    )


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor at `step`: linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ---------------------------------------------------------------------------------------------
# A run


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) one training run; returns the final metrics row plus the run's paths.

    Ctrl-C or SIGTERM stops the run between two steps, after saving last.pt, by raising
    RunInterrupted (a KeyboardInterrupt).
    """
    validate(cfg)
    if cfg.init_from and not cfg.resume:  # a wrong checkpoint is refused before any data is read
        load_backbone(build_backbone(cfg.arch), cfg.init_from, cfg.arch)
    rt = make_runtime(cfg.device, cfg.precision, cfg.channels_last, cfg.compile)
    cfg = replace(cfg, workers=loader_workers(cfg.workers, rt))
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    with hold_run_folder(out, cfg.resume, cfg.overwrite, rt):  # refusals before any data is read
        ensure_default_dataset(cfg.data, rt)
        run = start_run(cfg, rt, out)
        if rt.is_main:
            write_run_folder(out, {**run.config, "best_by": BEST_BY}, run.at.epoch)
        row = fit(run, progress)
    if rt.world > 1:
        torch.distributed.destroy_process_group()
    return {**row, "out": str(out), "best_val": run.at.best_val}


def start_run(cfg: TrainConfig, rt: Runtime, out: Path) -> Run:
    """Data, model, optimiser and schedule of a run; from last.pt when resuming."""
    index = load_index(cfg.data, cfg.split)
    if cfg.task == "supervised" and len({v.label for v in index.train}) < 2:
        raise DataError(
            f"{cfg.data}: supervised training needs two classes or more; its training videos "
            f"are all {index.classes[index.train[0].label]!r}, the loss would be 0"
        )
    loaders = make_loaders(cfg, rt, index.train)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(index.classes))
    if cfg.init_from and not cfg.resume:
        load_backbone(model, cfg.init_from, cfg.arch)
    model = rt.prepare(model)
    optimizer = make_optimizer(model, cfg)
    run = Run(
        cfg,
        config_dict(cfg),
        functools.partial(make_step, cfg),
        rt,
        out,
        index.classes,
        loaders,
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg, len(loaders["train"])),
        scaler=torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16"),
        metrics=task_metrics(cfg, len(index.classes)).to(rt.device),
    )
    if cfg.resume:
        run.resume()
    run.model = rt.wrap(model)
    return run


def make_loaders(cfg: TrainConfig, rt: Runtime, videos: tuple) -> dict[str, DataLoader | None]:
    """Training clips; other training clips for precise BatchNorm (another seed); the held-out
    groups' clips, the same every epoch: a motion task plays each held-out video at every rate
    (balanced, 4x the clips)."""
    train_videos, val_videos = split_by_group(videos, cfg.val_fraction, cfg.seed)
    if not train_videos:
        raise DataError(
            f"no training video is left after holding out {cfg.val_fraction} of the groups of "
            f"{cfg.data} for validation: lower --val-fraction"
        )
    mode = "clip" if cfg.task == "supervised" else "prp"
    common = dict(
        mode=mode,
        clip_len=cfg.clip_len,
        resize=cfg.resize,
        crop=cfg.crop,
        seed=cfg.seed,
        workers=cfg.workers,
    )
    random_crop = (cfg.train_crop or TASK_CROPS[cfg.task]) == "random"
    train_set = VideoDataset(train_videos, train=True, random_crop=random_crop, **common)
    val_set = VideoDataset(
        val_videos, train=False, views=len(RATES) if mode == "prp" else 1, **common
    )
    loaders: dict[str, DataLoader | None] = {"val": None}
    for name, dataset, seed, training in (
        ("train", train_set, cfg.seed, True),
        ("bn", train_set, cfg.seed + 1, True),
        ("val", val_set, cfg.seed, False),
    ):
        if len(dataset):
            repeats = cfg.clips_per_video if training else 1
            sampler = EpochSampler(
                len(dataset), seed, training, rt.rank, rt.world, training, repeats
            )
            loaders[name] = make_loader(dataset, sampler, cfg.batch_size, cfg.workers, rt, training)
    return loaders
