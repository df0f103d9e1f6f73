"""Pretraining: the task losses, the optimiser and `train()`; its config is config.py's.

Tasks (method.md sections 2-4):
- "prp": playback-rate perception: rate head on c5 + decoder reconstructing the 32-frame target,
  weighted by the difference motion mask (DPAU);
- "smp": PRP plus the convolution motion mask (CAM) blended with DPAU by a schedule, and
  multiple-granularity rate heads on c4, c3, c2;
- "supervised": action labels with cross-entropy.

PRP/SMP's step is `motion_step` and `motion_loss` below: the forward, the two motion masks,
the loss; the backward and the optimiser's step are the loop's (harness/engine.py).

`train(cfg)` runs on a CPU, one GPU or several under torchrun, and writes to its run folder:
config.json, metrics.jsonl (one row per epoch), last.pt (every epoch and every `save_every`
steps) and best.pt (lowest validation loss), in one checkpoint format (checkpoint.py).
`resume` goes on from last.pt, mid-epoch too, to the same numbers an uninterrupted run gets;
Ctrl-C or SIGTERM stops between two steps after saving last.pt (docs/reliability.md).
How a run starts, its loop, devices and checkpoints are the harness's (harness/).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.wrappers import ClasswiseWrapper

from .config import (
    DEFAULT_DATA,
    PRESETS,
    RATES,
    TASK_CROPS,
    TASKS,
    TrainConfig,
    check_run_settings,
)
from .data import VideoDataset
from .errors import ConfigError, DataError
from .harness.batches import to_float
from .harness.checkpoint import load_backbone
from .harness.engine import StepFn, StepOutput, loss_metrics
from .harness.launch import Parts, fit_parts, started
from .harness.runtime import unwrap
from .index import DatasetIndex, load_index, split_by_group
from .masks import blend_lambda, motion_mask_cam, upsample_mask
from .models import NUM_RATES, ActionNet, MotionNet, build_backbone

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
    check_run_settings(cfg)  # ConfigError (exit code 2) before anything is read
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
        return ActionNet(cfg.arch, num_classes, weight_init=cfg.weight_init)
    mg = cfg.task == "smp" and cfg.mg
    return MotionNet(cfg.arch, mg=mg, decoder=True, weight_init=cfg.weight_init)


@dataclass(frozen=True)
class LossWeights:
    """The weights of PRP/SMP's loss terms; the defaults are the original's (TrainConfig's)."""

    recon: float = TrainConfig.recon_weight
    rate: float = TrainConfig.rate_weight
    mg: float = TrainConfig.mg_weight


ORIGINAL_WEIGHTS = LossWeights()


def motion_step(
    model: nn.Module, batch: dict, lam: float, weights: LossWeights = ORIGINAL_WEIGHTS
) -> StepOutput:
    """One PRP/SMP step's forward and loss, with the CAM mask weighted `lam` (0: PRP's DPAU
    alone); the loop (engine.train_steps) does the backward and the optimiser's step."""
    out = model(to_float(batch["clip"]))  # each rate head's logits, the c5 head's map, recon
    targets = {k: batch[k] for k in ("target_weight", "dpau", "rate")}
    targets["target"] = to_float(batch["target"])  # (B, 3, 2T, H, W): at twice the frame rate
    rate_fc = unwrap(model).rate_heads[0].fc.weight  # (4, C): the c5 head's, for CAM
    loss, terms = motion_loss(out, targets, lam, rate_fc, weights)
    heads = {name: (z, batch["rate"]) for name, z in zip(HEAD_NAMES, out["logits"], strict=False)}
    heads["at_rate"] = heads["rate_c5"]  # the c5 head's accuracy at each rate
    return loss, terms, heads


def motion_loss(
    out: dict,
    targets: dict,
    lam: float,
    rate_fc: torch.Tensor,
    weights: LossWeights = ORIGINAL_WEIGHTS,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PRP/SMP loss (method.md 2-3): the reconstruction error weighted by the motion mask (DPAU
    blended with CAM by `lam`), averaged over each sample's supervised target frames and then
    over the batch, + 0.1 CE of the c5 head + 0.1 mean CE of the c4, c3, c2 heads (`weights`).

    targets: "target" (B, 3, 2T, H, W) float in [0, 1], "target_weight" (B, 2T) 1 where a
    target frame is supervised, "dpau" (B, 3, 2T, 13, 13), "rate" (B,) rate index. `rate_fc`:
    the c5 rate head's final weight (4, C), whose class-activation map is CAM.
    """
    rate, target = targets["rate"], targets["target"]
    size = tuple(target.shape[2:])
    mask = upsample_mask(targets["dpau"].float(), size)  # (B, 3, 2T, H, W): frame differences
    if lam > 0:  # SMP: where the rate head looks for the true rate
        cam = motion_mask_cam(rate_fc, out["rate_map"], rate, size)  # (B, 3, 2T, H, W)
        mask = lam * cam + (1 - lam) * mask
    weight = targets["target_weight"][:, None, :, None, None]  # (B, 1, 2T, 1, 1)
    sq_err = (out["recon"].float() - target).pow(2) * mask * weight  # (B, 3, 2T, H, W)
    # the mean over each sample's supervised elements, then over the batch, as the original:
    # a rate-1 sample (half its target frames are fillers) weighs as much as any other
    supervised = weight.flatten(1).sum(1) * 3 * size[1] * size[2]  # (B,)
    recon = (sq_err.flatten(1).sum(1) / supervised.clamp_min(1)).mean()
    ces = [F.cross_entropy(logits.float(), rate) for logits in out["logits"]]
    loss = weights.recon * recon + weights.rate * ces[0]
    terms = {"recon": recon.detach(), "ce": ces[0].detach()}
    if len(ces) > 1:  # multiple granularity: the c4, c3, c2 heads share one weight
        ce_mg = torch.stack(ces[1:]).mean()
        loss = loss + weights.mg * ce_mg
        terms["ce_mg"] = ce_mg.detach()
    return loss, terms


def supervised_step(model: nn.Module, batch: dict) -> StepOutput:
    logits = model(to_float(batch["clip"]))  # (B, classes)
    loss = F.cross_entropy(logits.float(), batch["label"])
    return loss, {"ce": loss.detach()}, {"action": (logits, batch["label"])}


def make_step(cfg: TrainConfig, epoch: int, training: bool = True) -> StepFn:
    """The step of the task at 0-based `epoch`: SMP's training mask moves from DPAU to CAM over
    the epochs; its validation keeps DPAU alone, so that best.pt's validation loss means the
    same at every epoch."""
    if cfg.task == "supervised":
        return supervised_step
    smp_training = cfg.task == "smp" and training
    lam = blend_lambda(cfg.lam_schedule, epoch + 1, cfg.epochs) if smp_training else 0.0
    weights = LossWeights(cfg.recon_weight, cfg.rate_weight, cfg.mg_weight)
    return functools.partial(motion_step, lam=lam, weights=weights)


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


def make_scheduler(optimizer: torch.optim.Optimizer, steps: int, cfg: TrainConfig):
    """ReduceLROnPlateau on the validation loss (stepped per epoch), or a linear warm-up then
    cosine decay to 0 (stepped per batch; `steps`: the batches of an epoch)."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.1, patience=cfg.plateau_patience, min_lr=1e-7
        )
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
    """Run (or resume) one pretraining run; returns the final metrics row plus the run's folder
    and best validation loss.

    Ctrl-C or SIGTERM stops the run between two steps, after saving last.pt, by raising
    RunInterrupted (a KeyboardInterrupt).
    """
    check_run_settings(cfg)  # ConfigError (exit code 2) before anything is read
    if cfg.init_from and not cfg.resume:  # a wrong checkpoint is refused before any data is read
        load_backbone(build_backbone(cfg.arch, cfg.weight_init), cfg.init_from, cfg.arch)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    load = functools.partial(load_training_index, task=cfg.task)
    with started(cfg, out, load) as (cfg, runtime, index, t0):
        datasets = pretraining_datasets(cfg, index.train)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, len(index.classes))
        if cfg.init_from and not cfg.resume:
            load_backbone(model, cfg.init_from, cfg.arch)
        model = runtime.prepare(model)
        parts = Parts(  # what launch.fit_parts trains
            classes=index.classes,
            datasets=datasets,
            model=model,
            optimizer=make_optimizer(model, cfg),
            schedule=functools.partial(make_scheduler, cfg=cfg),
            step_for=functools.partial(make_step, cfg),
            metrics=task_metrics(cfg, len(index.classes)),
            workers=cfg.workers,
            repeats=cfg.clips_per_video,
        )
        return fit_parts(cfg, parts, runtime, out, progress, t0)


def load_training_index(data: str, split: int, task: str) -> DatasetIndex:
    """The dataset's index; refused if supervised training would have one class only."""
    index = load_index(data, split)
    if task == "supervised" and len({v.label for v in index.train}) < 2:
        raise DataError(
            f"{data}: supervised training needs two classes or more; its training videos "
            f"are all {index.classes[index.train[0].label]!r}, the loss would be 0"
        )
    return index


def pretraining_datasets(cfg: TrainConfig, videos: tuple) -> dict[str, VideoDataset]:
    """Training clips (also those of precise BatchNorm); the held-out groups' clips, the same
    every epoch: a motion task plays each held-out video at every rate (balanced, 4x the
    clips)."""
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
    views = len(RATES) if mode == "prp" else 1
    val_set = VideoDataset(val_videos, train=False, views=views, **common)
    return {"train": train_set, "bn": train_set, "val": val_set}
