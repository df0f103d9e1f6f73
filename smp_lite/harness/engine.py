"""The engine every loop runs on: how it stops, how it feeds and measures, and the one
training loop (where it computes is `runtime.py`).

- `stop_on_signals`: Ctrl-C and SIGTERM become a request the loop honours between two steps;
- `make_loader`: a DataLoader whose worker processes leave Ctrl-C to the main process;
- `train_steps` and `evaluate_batches`: one pass over batches, training or not, with a task's step
  function plugged in and its metrics (a torchmetrics MetricCollection) updated;
- `precise_bn`: BatchNorm statistics recomputed at the current weights, averaged over ranks;
- `fit(run)`: epochs of training, precise BatchNorm and validation, with metrics.jsonl, best.pt
  and last.pt written, resumable mid-epoch; on stdout a `format_row` per epoch, bars or not.
  `launch.py` prints the run's `opening_line`, builds a task's `Run` and calls `fit`;
- `phase`: a pass that may take minutes (BatchNorm statistics, validation, a feature pass)
  under a bar, or without bars (logs) as one line once it is done.

A step function maps (model, batch on the device) to a `StepOutput`: the loss, the loss terms
to average (each needs a metric of its name: `loss_metrics`) and, per head, (logits, labels) for its
accuracy metric `acc_<head>`.
"""

from __future__ import annotations

import itertools
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import DataLoader, Dataset, Sampler
from torchmetrics import MeanMetric, Metric, MetricCollection, SumMetric
from torchmetrics.wrappers.abstract import WrapperMetric
from tqdm import tqdm  # text bars: the same in a terminal and a notebook

from ..config import RATES, LoopConfig
from ..errors import RunInterrupted, TrainError
from .batches import to_float
from .checkpoint import RunState, load_run, save_run
from .folders import append_metrics, run_folder
from .runtime import Runtime, unwrap

StepOutput = tuple[
    torch.Tensor, dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]
]
StepFn = Callable[[nn.Module, dict], StepOutput]


class NonFiniteLoss(ArithmeticError):
    """A step's loss or gradients were inf or NaN; the weights were not updated."""


# ---------------------------------------------------------------------------------------------
# The run folder


@contextmanager
def hold_run_folder(out: Path, resume: bool, overwrite: bool, runtime: Runtime) -> Iterator[None]:
    """Rank 0 holds the run folder (folders.run_folder: one run per folder, nothing lost);
    under torchrun the other ranks wait for its answer, so that a refusal stops them all."""
    with ExitStack() as stack:
        refusal = None
        if runtime.is_main:
            try:
                stack.enter_context(run_folder(out, resume, overwrite))
            except Exception as err:
                refusal = err
        if runtime.world > 1 and not all_ranks_ok(refusal is None, runtime):
            refusal = refusal or TrainError(f"rank 0 could not take the run folder {out}")
        if refusal is not None:
            raise refusal
        yield


def all_ranks_ok(ok: bool, runtime: Runtime) -> bool:
    flag = torch.tensor(float(ok), device=runtime.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


# ---------------------------------------------------------------------------------------------
# Stopping


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


def stop_requested(stop: threading.Event, runtime: Runtime) -> bool:
    if runtime.world == 1:
        return stop.is_set()
    flag = torch.tensor(
        float(stop.is_set()), device=runtime.device
    )  # any rank stopping stops them all
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


# ---------------------------------------------------------------------------------------------
# Data


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    workers: int,
    runtime: Runtime,
    drop_last: bool,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=runtime.device.type == "cuda",
        drop_last=drop_last and len(sampler) >= batch_size,
        worker_init_fn=quiet_worker,
    )


def quiet_worker(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the training step for cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process to handle


def note_skipped(batch: dict, seen: set[str], runtime: Runtime) -> None:
    """Add the videos the loader skipped in this batch to `seen`; each is logged once, by name."""
    texts = batch.pop("skipped", ())  # decoded videos name those they skipped; features do not
    new = {line for text in texts for line in text.splitlines() if line} - seen
    if runtime.is_main:
        for line in sorted(new):
            tqdm.write(f"skipped unreadable video {line}", file=sys.stderr)
    seen |= new


# ---------------------------------------------------------------------------------------------
# One pass over batches


def train_steps(
    model: nn.Module,
    batches: Iterable[dict],
    step_fn: StepFn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    metrics: MetricCollection,
    runtime: Runtime,
    skipped: set[str],
) -> Iterator[tuple[float, int]]:
    """Train on each batch, yielding (loss, clips in the batch) after each optimiser step, so
    the caller can count, schedule, save and stop between two steps. A non-finite loss or
    gradient raises NonFiniteLoss before the weights change. That check is the step's one wait
    for the GPU: the metrics stay on the device and the next batch's copy is already issued."""
    model.train()
    for batch in on_device(batches, skipped, runtime):
        try:
            with runtime.autocast():
                loss, terms, heads = step_fn(model, batch)
        except torch._dynamo.exc.BackendCompilerFailed as err:  # at the first step
            raise compile_failure(err) from None
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        value = checked_loss(loss, model, scaler)
        scaler.step(optimizer)
        scaler.update()
        yield value, update_metrics(metrics, loss, terms, heads)


def compile_failure(err: Exception) -> TrainError:
    """torch.compile's failure (a missing C compiler, say) as one line that names the way out."""
    cause = getattr(err, "inner_exception", err)
    why = f"{type(cause).__name__}: {(str(cause).strip() or '?').splitlines()[0][:300]}"
    return TrainError(f"torch.compile failed ({why}); --no-compile runs without it")


def on_device(batches: Iterable[dict], skipped: set[str], runtime: Runtime) -> Iterator[dict]:
    """The batches on the device, the skipped videos they name noted. On a GPU each batch is
    copied on a side stream while the step before computes (the loader pins its memory)."""
    if runtime.device.type != "cuda":
        for batch in batches:
            note_skipped(batch, skipped, runtime)
            yield runtime.to_device(batch)
        return
    copier, compute = torch.cuda.Stream(runtime.device), torch.cuda.current_stream(runtime.device)
    ahead = None  # (batch on the device, the event its copy ends with)
    for batch in batches:
        note_skipped(batch, skipped, runtime)
        with torch.cuda.stream(copier):
            moved = runtime.to_device(batch)
            for v in moved.values():
                if isinstance(v, torch.Tensor):  # not freed while the step still reads it
                    v.record_stream(compute)
            copied = copier.record_event()
        if ahead is not None:
            compute.wait_event(ahead[1])
            yield ahead[0]
        ahead = (moved, copied)
    if ahead is not None:
        compute.wait_event(ahead[1])
        yield ahead[0]


def checked_loss(loss: torch.Tensor, model: nn.Module, scaler: torch.amp.GradScaler) -> float:
    """The loss as a number, once it and the gradients are known to be finite (under fp16 the
    gradient scaler skips steps with inf/NaN gradients itself): NonFiniteLoss otherwise, before
    they reach the weights (and a checkpoint). One synchronisation for both."""
    checks = [loss.detach().float()]
    if not scaler.is_enabled():
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        checks.append(torch.nn.utils.get_total_norm(grads).float())
    values = torch.stack(checks).tolist()
    if not math.isfinite(values[0]):
        raise NonFiniteLoss(f"loss became {values[0]}")
    if not all(map(math.isfinite, values)):
        raise NonFiniteLoss(f"gradients became {values[1]} (the loss was finite)")
    return values[0]


def evaluate_batches(
    model: nn.Module,
    batches: Iterable[dict],
    step_fn: StepFn,
    metrics: MetricCollection,
    runtime: Runtime,
    stop: threading.Event,
    skipped: set[str],
) -> bool:
    """Update `metrics` over the batches without training; False when a stop was requested.

    Under DDP the ranks may hold one batch more or less (each clip is evaluated once), so they
    agree on a stop once, at the end, and `model` should be the bare model, not its DDP wrapper.
    """
    model.eval()
    with torch.no_grad():
        for batch in on_device(batches, skipped, runtime):
            with runtime.autocast():
                update_metrics(metrics, *step_fn(model, batch))
            if stop.is_set():
                break
    return not stop_requested(stop, runtime)


def update_metrics(metrics: MetricCollection, loss: torch.Tensor, terms: dict, heads: dict) -> int:
    """Clip-weighted means of the loss and its terms, each head's accuracy, the clip count;
    returns the number of clips in the batch. Nothing here waits for the GPU."""
    labels = next(iter(heads.values()))[1]
    n = labels.shape[0]
    clips = torch.full((), n, dtype=torch.float64, device=labels.device)  # no host-to-GPU copy
    metrics["clips"].update(clips)
    for name, value in {"loss": loss.detach(), **terms}.items():
        metrics[name].update(value.double(), clips)
    for name, (logits, labels) in heads.items():
        metrics[f"acc_{name}"].update(logits.detach(), labels)
    return n


def loss_metrics(terms: list[str]) -> dict[str, Metric]:
    """The mean loss, the means of its `terms`, and the clip count, as `update_metrics` feeds
    them: without torchmetrics' NaN checks, each of which waits for the GPU (the training loop
    checks the loss itself; a NaN in evaluation shows in the mean)."""
    metrics: dict[str, Metric] = {
        name: StepMean().set_dtype(torch.float64) for name in ["loss", *terms]
    }
    metrics["clips"] = SumMetric(nan_strategy="disable").set_dtype(torch.float64)
    return metrics


class StepMean(MeanMetric):
    """MeanMetric's weighted mean of one value per step, its states and their reduction."""

    def update(self, value: torch.Tensor, weight: torch.Tensor) -> None:
        self.mean_value += value * weight
        self.weight += weight


def metrics_row(metrics: MetricCollection) -> dict[str, float | int]:
    """The metrics as plain numbers, reduced over DDP ranks; clip counts as integers."""
    row = {name: value.item() for name, value in metrics.compute().items()}
    return {k: int(v) if k.endswith("clips") else v for k, v in row.items()}


def metrics_state(
    metrics: MetricCollection, runtime: Runtime
) -> dict[str, dict[str, torch.Tensor]]:
    """Each metric's state summed over ranks, for a mid-epoch checkpoint (a collective call)."""
    state = {}
    for name, metric in metrics.items(keep_base=True):
        metric = state_holder(metric)
        with metric.sync_context(should_sync=runtime.world > 1):
            state[name] = {k: v.cpu() for k, v in metric.metric_state.items()}
    return state


def load_metrics_state(metrics: MetricCollection, state: dict, runtime: Runtime) -> None:
    """Go on from a saved `metrics_state`: rank 0 holds the sums, other ranks start at zero.
    A metric whose states changed since the checkpoint was saved counts from here, said once."""
    if runtime.is_main:
        for name, saved in state.items():
            holder = state_holder(metrics[name]) if name in metrics else None
            if holder is None or saved.keys() != holder.metric_state.keys():
                tqdm.write(f"note: {name} counts from here (saved by another smp-lite version)")
                continue
            holder.merge_state({k: v.to(runtime.device) for k, v in saved.items()})


def state_holder(metric: Metric) -> Metric:
    """The metric whose states hold the counts: a wrapper's inner one (ClasswiseWrapper)."""
    return metric.metric if isinstance(metric, WrapperMetric) else metric


# ---------------------------------------------------------------------------------------------
# Long phases: a bar in a terminal, a line in a log


def phase(
    batches: Iterable,
    what: str,
    clips: int,
    progress: bool,
    runtime: Runtime,
    *,
    sharded: bool = False,
    quiet: bool = False,
) -> Iterator:
    """The batches (dicts with a "label", or clip tensors) of a pass that may take minutes,
    counted in clips (`clips` on this process): with `progress` under a bar (clips/s, time
    left), without it one `phase_line` on stdout once done, so that a log shows where the time
    went. `sharded`: each rank takes its share of the clips, counted for all as this one's
    times the ranks. On the main process only; `quiet`: neither (a probe's seconds-long
    epochs)."""
    shown = runtime.is_main and not quiet
    ranks = runtime.world if sharded else 1
    bar = tqdm(
        desc=what,
        total=clips * ranks,
        unit="clip",
        disable=not (progress and shown),
        leave=False,
        dynamic_ncols=True,
    )
    done, t0 = 0, time.perf_counter()
    with bar:
        for batch in batches:
            yield batch
            n = len(batch) if isinstance(batch, torch.Tensor) else len(batch["label"])
            bar.update(n * ranks)  # once the batch is done with
            done += n * ranks
    if shown and not progress:
        say(phase_line(what, done, time.perf_counter() - t0))


def loader_clips(loader: DataLoader, batches: int) -> int:
    """The clips in the loader's first `batches` batches on this process."""
    whole = len(loader) * loader.batch_size if loader.drop_last else len(loader.sampler)
    return min(whole, batches * loader.batch_size)


def phase_line(what: str, clips: int, seconds: float) -> str:
    """E.g. "validation (epoch 3): 1,200 clips in 1 min 41 s (11.9 clips/s)"."""
    rate = clips / max(seconds, 1e-9)
    return f"{what}: {clips:,} clips in {duration(seconds)} ({rate:,.1f} clips/s)"


def duration(seconds: float) -> str:
    """Seconds as a log reads them: "0.4 s", "41 s", "7 min 2 s", "2 h 5 min"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


# ---------------------------------------------------------------------------------------------
# Precise BatchNorm


def precise_bn(model: nn.Module, clips: Iterable[torch.Tensor], runtime: Runtime) -> None:
    """Replace the BatchNorm running statistics by the mean and variance of each BN layer's
    input over `clips` at the current weights (torch's update_bn), averaged over DDP ranks.

    The running averages mix batches seen under many past weights; while the weights change
    fast, evaluation with them can cost 20-30 points of validation accuracy (docs/usage.md,
    "Precise BatchNorm").
    Weights are untouched. Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021.
    """
    with runtime.autocast():
        torch.optim.swa_utils.update_bn(clips, model)
    if runtime.world > 1:
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                for stat in (bn.running_mean, bn.running_var):
                    dist.all_reduce(stat)
                    stat /= runtime.world


# ---------------------------------------------------------------------------------------------
# The training loop


@dataclass
class Run:
    """One training run as the loop sees it; `state` says where it stands. A checkpoint holds the
    state of `objects()`, `state`, and the run's settings as JSON values."""

    cfg: LoopConfig  # the run's settings; a checkpoint holds cfg.as_json()
    step_for: Callable[[int, bool], StepFn]  # the task's step at a 0-based epoch, training or not
    runtime: Runtime
    out: Path
    classes: tuple[str, ...]
    loaders: dict[str, DataLoader | None]  # train, bn (precise BatchNorm), val
    model: nn.Module  # under DistributedDataParallel when there are several ranks
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | ReduceLROnPlateau  # stepped per batch; a plateau one per epoch
    scaler: torch.amp.GradScaler
    metrics: MetricCollection  # unprefixed, never updated: cloned per epoch
    epoch_batches: int  # training batches in an epoch (launch.epoch_batches)
    state: RunState = field(default_factory=RunState)
    keep_best: bool = True  # best.pt by validation loss; not when "validation" is the test set
    short_epochs: bool = False  # seconds each (a probe's): one bar over the run, quiet phases

    def objects(self) -> dict:
        """The objects whose state a checkpoint holds."""
        return {
            "model": unwrap(self.model),
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
        }

    def resume(self) -> None:
        self.state = load_run(
            self.out / "last.pt", self.cfg.as_json(), self.classes, self.objects()
        )

    def save(self, names: list[str], row: dict) -> None:
        """Save the run as each of `names` in order (save_run): last.pt whole, to resume from;
        best.pt the model alone, what evaluation reads (half the size without the optimizer)."""
        for name in names:
            objects = self.objects() if name == "last.pt" else {"model": unwrap(self.model)}
            save_run(self.out / name, self.cfg.as_json(), self.classes, objects, self.state, row)


def fit(run: Run, progress: bool = True) -> dict:
    """Train `run` from where it stands to its last epoch; returns the last epoch's row.

    Prints after each epoch its row (with or without `progress`, which shows the bars: a log
    without bars still needs the numbers). After each epoch:
    precise BatchNorm, validation, metrics.jsonl, best.pt (lowest validation loss) and
    last.pt; without `progress` each of the two phases prints one line (`phase`), unless the
    epochs are short. Ctrl-C or SIGTERM stops between two steps, after saving last.pt, by
    raising RunInterrupted (a KeyboardInterrupt).
    """
    row: dict = {}
    with stop_on_signals() as stop, ExitStack() as held:
        # a probe's epochs of a second share one bar; others each have their own, closed before
        # the epoch's BatchNorm and validation bars: one bar on screen at a time
        whole = held.enter_context(steps_bar(run, progress)) if run.short_epochs else None
        for epoch in range(run.state.epoch, run.cfg.epochs):
            with nullcontext(whole) if whole is not None else steps_bar(run, progress) as bar:
                row = train_epoch(run, epoch, stop, bar)
            row = end_epoch(run, epoch, row, stop, progress)
            if run.runtime.is_main:
                say(format_row(row, len(run.classes), "val" if run.keep_best else "test"))
    return row


def train_epoch(run: Run, epoch: int, stop: threading.Event, bar: tqdm) -> dict:
    """Train one epoch (the rest of it, when resumed mid-epoch), counting its steps on `bar`
    (`steps_bar`: the epoch's or the run's); returns its training row."""
    cfg, runtime, state = run.cfg, run.runtime, run.state
    # the sampler skips within this rank's shard: a resumed epoch decodes no sample twice
    run.loaders["train"].sampler.set_epoch(epoch, skip=state.batches_done * cfg.batch_size)
    metrics = run.metrics.clone(prefix="train_")
    load_metrics_state(metrics, state.metric_state, runtime)
    bar.set_description(f"epoch {epoch + 1}/{run.cfg.epochs}", refresh=False)  # a whole run's
    steps = train_steps(
        run.model,
        itertools.islice(run.loaders["train"], run.epoch_batches - state.batches_done),
        run.step_for(epoch, True),
        run.optimizer,
        run.scaler,
        metrics,
        runtime,
        state.skipped,
    )
    clips, t0 = 0, time.perf_counter()
    try:
        for loss, n in steps:
            if not isinstance(run.scheduler, ReduceLROnPlateau):
                run.scheduler.step()
            state.step += 1
            state.batches_done += 1
            clips += n * runtime.world
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # drawn at the bar's own pace
            bar.update()
            if stop_requested(stop, runtime):
                save_mid_epoch(run, metrics)
                raise RunInterrupted(run.out / "last.pt")
            if (
                cfg.save_every
                and state.step % cfg.save_every == 0
                and state.batches_done < run.epoch_batches
            ):
                save_mid_epoch(run, metrics)
    except NonFiniteLoss as err:
        end_bar_line(bar)
        last = run.out / "last.pt"
        saved = f"last good checkpoint: {last}" if last.is_file() else "nothing saved"
        raise TrainError(
            f"{err} at step {state.step + 1} (epoch {epoch + 1}, batch {state.batches_done + 1}): "
            f"stopped; {saved}"
        ) from None
    except BaseException:  # a stop (RunInterrupted), a second Ctrl-C, any other error
        end_bar_line(bar)
        raise
    elapsed = time.perf_counter() - t0
    run.state.metric_state = metrics_state(metrics, runtime)  # kept until the epoch is saved whole
    return {
        "epoch": epoch + 1,
        "step": state.step,
        "lr": run.optimizer.param_groups[0]["lr"],
        "clips_per_s": clips / max(elapsed, 1e-9),
        **metrics_row(metrics),
    }


def steps_bar(run: Run, progress: bool) -> tqdm:
    """A bar of training steps from where the run stands, on the main process only and with
    `progress` only: the epoch's, or with `short_epochs` the whole run's (a probe's 150 epochs
    of a second would otherwise flood the screen with bars)."""
    state, per_epoch = run.state, run.epoch_batches
    done_before = state.epoch * per_epoch if run.short_epochs else 0
    return tqdm(
        desc=f"epoch {state.epoch + 1}/{run.cfg.epochs}",
        total=per_epoch * (run.cfg.epochs if run.short_epochs else 1),
        initial=done_before + state.batches_done,  # where a resumed run stands
        unit="step",
        disable=not (progress and run.runtime.is_main),
        leave=False,
        dynamic_ncols=True,
    )


def end_bar_line(bar: tqdm) -> None:
    """Leave the bar where the run stopped and end its line: the message that follows (how to
    resume, the error) then starts on a line of its own, not glued to the bar's end."""
    bar.leave = True
    bar.close()  # a disabled bar writes nothing


def save_mid_epoch(run: Run, metrics: MetricCollection) -> None:
    # on every rank: a collective under DDP
    run.state.metric_state = metrics_state(metrics, run.runtime)
    if run.runtime.is_main:
        run.save(["last.pt"], {})


def end_epoch(
    run: Run, epoch: int, row: dict, stop: threading.Event, progress: bool = False
) -> dict:
    """Precise BatchNorm, validation, the plateau schedule, then the epoch's row and checkpoints.
    A stop during validation saves the epoch's training, which a resume then validates. Each of
    the two phases under a bar of its own with `progress`, else in one line (`phase`)."""
    runtime, state = run.runtime, run.state
    if run.cfg.precise_bn:  # before validation and saving: both should see the current weights
        refresh_batchnorm(run, epoch, progress)
    if run.loaders["val"] is not None:
        row |= validate(run, epoch, stop, progress)
    val_loss = row.get("val_loss", row["train_loss"])
    if isinstance(run.scheduler, ReduceLROnPlateau):
        run.scheduler.step(val_loss)
    row["skipped_videos"] = len(state.skipped)
    is_best = val_loss < state.best_val
    state.best_val = min(state.best_val, val_loss)
    state.epoch, state.batches_done, state.metric_state = epoch + 1, 0, {}
    if runtime.is_main:
        # metrics first and last.pt last: a kill in between repeats the epoch on resume,
        # which then drops the epoch's row and rewrites best.pt
        append_metrics(run.out, row)
        run.save(["best.pt", "last.pt"] if is_best and run.keep_best else ["last.pt"], row)
    return row


def refresh_batchnorm(run: Run, epoch: int, progress: bool) -> None:
    """Precise BatchNorm on `cfg.precise_bn` batches of the epoch's "bn" clips."""
    batches = min(run.cfg.precise_bn, run.cfg.limit_batches or run.cfg.precise_bn)
    loader = run.loaders["bn"]
    loader.sampler.set_epoch(epoch)
    clips = training_clips(loader, batches, run.runtime, run.state)
    what = f"BatchNorm statistics (epoch {epoch + 1})"
    clips = epoch_phase(run, clips, what, loader, batches, progress)
    precise_bn(unwrap(run.model), clips, run.runtime)


def validate(run: Run, epoch: int, stop: threading.Event, progress: bool) -> dict:
    """The epoch's validation metrics ("test" where the held-out clips are the test split);
    a stop saves last.pt and raises RunInterrupted."""
    val = run.loaders["val"]
    batches = min(len(val), run.cfg.limit_batches or len(val))
    what = f"{'validation' if run.keep_best else 'test'} (epoch {epoch + 1})"
    clips = epoch_phase(run, itertools.islice(val, batches), what, val, batches, progress)
    metrics = run.metrics.clone(prefix="val_")
    step = run.step_for(epoch, False)
    model = unwrap(run.model)
    if not evaluate_batches(model, clips, step, metrics, run.runtime, stop, run.state.skipped):
        if run.runtime.is_main:
            run.save(["last.pt"], {})
        raise RunInterrupted(run.out / "last.pt")
    return metrics_row(metrics) | {"val_views_dropped": val.dataset.views_dropped}


def epoch_phase(
    run: Run, items: Iterable, what: str, loader: DataLoader, batches: int, progress: bool
) -> Iterator:
    """`items` (from the loader's first `batches` batches) as one of an epoch's `phase`s: each
    rank on its shard, quiet within a probe's seconds-long epochs."""
    clips = loader_clips(loader, batches)
    return phase(items, what, clips, progress, run.runtime, sharded=True, quiet=run.short_epochs)


def training_clips(loader: DataLoader, batches: int, runtime: Runtime, state: RunState):
    """The clips of the loader's first `batches` batches, on the device, as floats."""
    for batch in on_device(itertools.islice(loader, batches), state.skipped, runtime):
        yield to_float(batch["clip"])


def say(line: str) -> None:
    """A line on stdout, clear of the bars (on stderr) and flushed: a log file gets it at once
    and in order with the bars and messages, though a redirected stdout is block-buffered."""
    tqdm.write(line)
    sys.stdout.flush()


def opening_line(config: dict, runtime: Runtime, out: Path) -> str:
    """What a run does, in the one line it starts with: the command, task and backbone (and its
    init), the data and preset, clips and steps, where it computes and where it writes, e.g.
    "pretrain smp r3d18 on data/synth (quick preset): 16x48x48 clips, batch 8, 10 epochs,
    cpu bf16 -> runs/smp-r3d18-synth". `config` is the run's config.json."""
    if "init_from" in config:  # a pretraining's; an evaluation's task is its kind
        what, init = f"pretrain {config['task']}", config["init_from"]
    else:
        what, init = config["task"].replace("-", " "), config.get("init", "")
    source = {"": "", "random": " with random weights"}.get(init, f" from {init}")
    size = f"{config['clip_len']}x{config['crop']}x{config['crop']} clips"
    steps = [f"batch {config['batch_size']}"] if "batch_size" in config else []
    epochs = config.get("epochs")
    steps += [f"{epochs} epoch{'s' * (epochs != 1)}"] if epochs else []
    device = f"{runtime.world}x {runtime.device.type}" if runtime.world > 1 else str(runtime.device)
    compiled = " compiled" if runtime.compile else ""
    return (
        f"{what} {config['arch']}{source} on {config['data']} ({config['preset']} preset): "
        f"{', '.join([size, *steps])}, {device} {runtime.precision}{compiled} -> {out}"
    )


def number(key: str, value: object) -> str:
    """4 significant digits; a speed with one decimal, never in scientific notation."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.1f}" if key == "clips_per_s" else f"{value:.4g}"


def format_row(row: dict, classes: int = 0, held_out: str = "val") -> str:
    """An epoch's row in one line. The last accuracy shown of each head (validation, else
    training) says its chance level, so that 0.3 reads right at a glance: 1/4 for a playback
    rate head (rate_*, speed), 1/classes for the action. `held_out` names the evaluated
    clips: "test" where they are the test split (a probe), though metrics.jsonl keeps `val_`."""
    keys = ["epoch", "train_loss", "val_loss", "train_acc_rate_c5", "val_acc_rate_c5"]
    keys += ["train_acc_speed", "val_acc_speed", "train_acc_action", "val_acc_action"]
    keys += ["clips_per_s"]
    keys = [k for k in keys if k in row]
    texts = [f"{k.replace('val_', held_out + '_', 1)}={number(k, row[k])}" for k in keys]
    last = {k.partition("_acc_")[2]: k for k in keys if "_acc_" in k}  # val after train
    for head, k in last.items():
        n = classes if head == "action" else len(RATES)
        if n:
            texts[keys.index(k)] += f" (chance {1 / n:.2g})"
    return "  ".join(texts)
