"""How every run starts, written once.

- `started(cfg, out, load_data)`: where the run computes (runtime.py), its folder held
  (folders.py), its dataset indexed, config.json written, the opening line printed;
- `fit_parts(cfg, parts, ...)`: a trained run. The task brings its `Parts` (datasets, model,
  optimiser, schedule, step, metrics, and what to compute once trained); `fit_parts` builds
  the loaders and the `Run`, resumes it from last.pt when asked, trains it on the engine's
  loop (`fit`) and writes results.json.

Pretraining (train.py), fine-tuning (evaluate.py) and the probe (probe.py) each build their
`Parts` inside `started` and hand them to `fit_parts`; retrieval, which trains nothing, uses
`started` alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MetricCollection

from ..config import LoopConfig, RunConfig
from .batches import EpochSampler
from .checkpoint import LAST
from .engine import Run, StepFn, fit, hold_run_folder, make_loader, opening_line, say
from .folders import write_results, write_run_folder
from .runtime import Runtime, loader_workers, make_runtime

Scheduler = LRScheduler | ReduceLROnPlateau


@dataclass
class Parts:
    """What a task brings to a trained run; `launch` does the rest."""

    classes: tuple[str, ...]
    # "train"; "bn": training clips for precise BatchNorm; "val": evaluated after each epoch
    datasets: dict[str, Dataset]
    model: nn.Module  # on the runtime's device
    optimizer: torch.optim.Optimizer
    schedule: Callable[[torch.optim.Optimizer, int], Scheduler]  # (optimiser, epoch's batches)
    step_for: Callable[[int, bool], StepFn]  # the step at a 0-based epoch, training or not
    metrics: MetricCollection
    workers: int = 0  # loader processes
    repeats: int = 1  # training clips per video and epoch (repeated sampling)
    keep_best: bool = True  # best.pt by validation loss; not when "val" is the test set
    short_epochs: bool = False  # seconds each (a probe's): one bar over the run (engine.Run)
    results: Callable[[Run], dict] | None = None  # once trained: results.json; None: none


@contextmanager
def started(
    cfg: RunConfig, out: Path, load_data: Callable[[str, int], Any]
) -> Iterator[tuple[Any, Runtime, Any, float]]:
    """(`cfg` with its loader workers settled, the runtime, the dataset's index from
    `load_data(cfg.data, cfg.split)`, the time.perf_counter() the run's work starts from: its
    results' "seconds" count from there), refused in this order: the device, the run folder `out`
    (then held), the dataset. Once all three are there, config.json is written and the run's
    opening line printed, before any long work; a failed start leaves the folder as it was
    (folders.run_folder). Under torchrun the process group is left once the run is done."""
    runtime = make_runtime(cfg.device, cfg.precision, cfg.channels_last, cfg.compile)
    cfg = replace(cfg, workers=loader_workers(cfg.workers, runtime))
    with hold_run_folder(out, cfg.resume, cfg.overwrite, runtime):
        index = load_data(cfg.data, cfg.split)
        if runtime.is_main:
            config = cfg.as_json()
            if not cfg.resume:  # a resume rewrites it once it knows its epoch (fit_parts)
                write_run_folder(out, config, 0)
            say(opening_line(config, runtime, out))
        yield cfg, runtime, index, time.perf_counter()
    if runtime.world > 1:
        torch.distributed.destroy_process_group()


def fit_parts(
    cfg: LoopConfig, parts: Parts, runtime: Runtime, out: Path, progress: bool, t0: float
) -> dict:
    """Train the task's `parts` in the folder `started` holds (resumed from last.pt when asked):
    results.json's contents (its "seconds" counted from `t0`, before the parts were built: a
    probe's caching is part of its run), or where the task computes no results (pretraining)
    the last epoch's row with the run's folder and best validation loss.

    `cfg` is a trained run's config (config.LoopConfig: TrainConfig, ProbeConfig or
    FinetuneConfig). Ctrl-C or SIGTERM stops between two steps after saving last.pt, by raising
    RunInterrupted (a KeyboardInterrupt).
    """
    run = new_run(cfg, parts, runtime, out)
    if runtime.is_main and cfg.resume:
        write_run_folder(out, cfg.as_json(), run.state.epoch)
        say(f"resumed at epoch {run.state.epoch + 1}, step {run.state.step}")
    row = fit(run, progress)
    if parts.results is None:
        return {**row, "out": str(out), "best_val": run.state.best_val}
    results = parts.results(run)
    results |= {"seconds": time.perf_counter() - t0, "device": str(runtime.device)}
    if runtime.is_main:
        write_results(out, results)
    return results


def new_run(cfg: LoopConfig, parts: Parts, runtime: Runtime, out: Path) -> Run:
    """The parts as a `Run`: loaders, the schedule over an epoch's batches, the gradient scaler
    (fp16 only); from last.pt when resuming; the model wrapped for the runtime (DDP, compile)."""
    loaders = make_loaders(
        parts.datasets, cfg.seed, cfg.batch_size, parts.workers, runtime, parts.repeats
    )
    batches = epoch_batches(loaders["train"], cfg.limit_batches)
    run = Run(
        cfg,
        parts.step_for,
        runtime,
        out,
        parts.classes,
        loaders,
        model=parts.model,
        optimizer=parts.optimizer,
        scheduler=parts.schedule(parts.optimizer, max(1, batches)),
        scaler=torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16"),
        metrics=parts.metrics.to(runtime.device),
        epoch_batches=batches,
        keep_best=parts.keep_best,
        short_epochs=parts.short_epochs,
    )
    if cfg.resume and (out / LAST).is_file():  # a probe may resume from its features alone
        run.resume()
    run.model = runtime.wrap(parts.model)
    return run


def make_loaders(
    datasets: dict[str, Dataset],
    seed: int,
    batch_size: int,
    workers: int,
    runtime: Runtime,
    repeats: int,
) -> dict[str, DataLoader | None]:
    """A loader for each non-empty dataset: "train" and "bn" shuffled per epoch (bn with
    another seed: other clips), sharded over ranks and padded so that every rank takes as many
    steps, whole batches only; "val" in order, each clip on one rank."""
    loaders: dict[str, DataLoader | None] = {"bn": None, "val": None}
    for name, dataset in datasets.items():
        if not len(dataset):
            continue
        training = name != "val"
        sampler = EpochSampler(
            len(dataset),
            seed + (name == "bn"),
            training,
            runtime.rank,
            runtime.world,
            training,
            repeats if training else 1,
        )
        loaders[name] = make_loader(dataset, sampler, batch_size, workers, runtime, training)
    return loaders


def epoch_batches(loader: DataLoader, limit: int) -> int:
    """The training batches of an epoch: the loader's, or `limit` (> 0) if fewer."""
    return min(len(loader), limit or len(loader))
