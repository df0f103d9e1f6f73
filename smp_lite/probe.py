"""The linear probe (method.md section 4): the backbone frozen, a new linear layer on its pooled
c5 feature learns the playback rate (`target="speed"`, the seed's Table 1) or the action
(`target="action"`). Its config, `ProbeConfig`, and what it shares with fine-tuning and
retrieval (the run folder, frozen features, reports) are in evaluate.py.

The probe caches features. A frozen backbone in eval mode maps a clip to one feature, so the
probe computes each clip's feature once instead of once per epoch. Cached, for `speed`: every
training video at each of the four rates, `train_views` times with starts drawn once (seeded),
centre crop; every test video at each rate once. For `action`: `train_views` clips per training
video centred at linspace(T/2, frames - T/2); the test videos' `test_views` clips likewise,
logits averaged per video. What caching gives up is fresh random starts and crops every epoch.

Two variants of the speed probe (Table 1's extra rows and table):
- `refit_bn`: before caching, the frozen backbone's BatchNorm statistics are re-estimated on
  the probe's training clips (weights untouched), then features are taken in eval mode as
  usual. Random weights keep BatchNorm's initial statistics (mean 0, variance 1), under which
  activations shrink layer by layer: their features barely vary (std ~0.002 at 112x112), and
  a probe on them sits near chance, unlike the seed's Random row (41-42%).
- `init="motion-energy"`: no network; a clip's feature is one number, the log of the mean
  squared difference between its consecutive frames: how much a rate's clip changes. What a
  probe gains over it is what a backbone adds to raw motion energy.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import MOTION_ENERGY, RATES, ProbeConfig
from .data import VideoDataset
from .errors import ConfigError, DataError, RunInterrupted
from .evaluate import (
    BackboneFeature,
    CachingInterrupted,
    FeatureSet,
    accuracy_report,
    checked_eval,
    classifier_metrics,
    clip_dataset,
    first_of_each,
    frozen_outputs,
    initial_backbone,
    same_step,
    test_groups,
    video_mean,
)
from .harness.batches import EpochSampler
from .harness.checkpoint import CONFIG, FEATURES, FEATURES_PARTIAL, RunState
from .harness.engine import (
    Run,
    StepOutput,
    loader_clips,
    make_loader,
    phase,
    precise_bn,
    say,
    training_clips,
)
from .harness.launch import Parts, fit_parts, started
from .harness.runtime import Runtime, unwrap
from .index import DatasetIndex, load_index
from .train import warmup_cosine


def probe(cfg: ProbeConfig, progress: bool = True) -> dict:
    """Train a linear layer on the frozen backbone's cached features; returns results.json."""
    out = checked_eval(cfg)
    # another probe's features: refused before any work unless they are this probe's clips
    source = features_file(cfg) if cfg.features else None
    if source:
        refuse_older_features(source, cfg.init, f"--features {cfg.features}", "drop --features")
    for cache in (FEATURES, FEATURES_PARTIAL):
        if cfg.resume and (out / cache).is_file():
            refuse_older_features(out / cache, cfg.init, "--resume", "start over with --overwrite")
    with started(cfg, out, load_index) as (cfg, runtime, index, t0):
        parts = probe_parts(cfg, runtime, index, out, progress, source)
        return fit_parts(cfg, parts, runtime, out, progress, t0)


def refuse_older_features(features: Path, init: str, what: str, instead: str) -> None:
    """Features cached before their `init` checkpoint was last written are another backbone's
    (its pretraining rerun into the same folder): refused in one line, not silently reused."""
    weights = Path(init)
    if weights.is_file() and weights.stat().st_mtime_ns > features.stat().st_mtime_ns:
        raise ConfigError(
            f"{what}: {features} holds features of an older {weights}, written again since: "
            f"{instead}"
        )


def probe_parts(
    cfg: ProbeConfig,
    runtime: Runtime,
    index: DatasetIndex,
    out: Path,
    progress: bool,
    source: Path | None,
) -> Parts:
    """The cached features (this run's own when resuming, else those of `source`, another
    probe's, else computed; saved in the run folder) and a linear layer to train on them."""
    resumed = cfg.resume and (out / FEATURES).is_file()
    if resumed or source:
        cached = load_features(out / FEATURES if resumed else source)
    else:
        partial = out / FEATURES_PARTIAL
        done = load_features(partial) if cfg.resume and partial.is_file() else {}
        cached = probe_features(cfg, runtime, index, progress, done, partial)
    if runtime.is_main and not resumed:
        torch.save(cached, out / FEATURES)
        (out / FEATURES_PARTIAL).unlink(missing_ok=True)
    cached["test_groups"] = test_groups(index)  # what the spreads resample
    names = [str(r) for r in RATES] if cfg.target == "speed" else list(index.classes)
    return linear_parts(cfg, cached, names, runtime)


def linear_parts(cfg: ProbeConfig, cached: dict, names: list[str], runtime: Runtime) -> Parts:
    """A linear layer on the cached features and its cosine schedule; the test clips are
    evaluated after every epoch (curves), and the last epoch is the result (no best.pt)."""
    label = "rate" if cfg.target == "speed" else "label"
    datasets = {
        name: FeatureSet(cached[key]["output"], cached[key][label], cached["views_dropped"][key])
        for name, key in (("train", "train"), ("val", "test"))
    }
    torch.manual_seed(cfg.seed)
    features = cached["train"]["output"]  # (N, D)
    model = nn.Linear(features.shape[1], len(names))
    if cfg.standardize:  # a fixed affine map then a linear layer: still a linear probe
        model = nn.Sequential(Standardize(features.mean(0), features.std(0)), model)
    model = model.to(runtime.device)
    return Parts(
        classes=tuple(names),
        datasets=datasets,
        model=model,
        optimizer=torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        ),
        schedule=functools.partial(cosine_schedule, epochs=cfg.epochs),
        step_for=functools.partial(same_step, step=functools.partial(probe_step, head=cfg.target)),
        metrics=classifier_metrics(cfg.target, len(names)),
        keep_best=False,
        short_epochs=True,  # epochs over cached features take seconds
        results=functools.partial(probe_results, cfg, cached, names),
    )


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, epochs: int):
    """Cosine decay to 0 over the run, stepped per batch (`steps`: the batches of an epoch)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, warmup=0, total=epochs * steps)
    )


# What decides which clips a features.pt holds and what they became (and test_views for the
# action target; the speed target tests each video once at each rate)
FEATURE_FIELDS = tuple(
    "arch init data split target clip_len resize crop train_views seed refit_bn".split()
)


def features_file(cfg: ProbeConfig) -> Path:
    """`cfg.features` (a probe run's folder or its features.pt), refused unless that run's
    config says it cached the clips this probe would."""
    path = Path(cfg.features)
    path = path / FEATURES if path.is_dir() else path
    config = path.parent / CONFIG
    if not path.is_file() or not config.is_file():
        raise ConfigError(f"features {cfg.features}: not a probe run's {FEATURES} (no such file)")
    try:
        theirs = json.loads(config.read_text())
    except ValueError:
        raise DataError(f"{config} is not readable JSON") from None
    ours = cfg.as_json()
    if not str(theirs.get("task")).startswith("probe"):
        raise ConfigError(f"features {cfg.features}: not a probe run's {FEATURES}")
    fields = FEATURE_FIELDS + (("test_views",) if cfg.target == "action" else ())
    differ = [f"{f} {theirs.get(f)!r}, not {ours[f]!r}" for f in fields if theirs.get(f) != ours[f]]
    if differ:
        raise ConfigError(f"{path} holds other clips than this probe's: {'; '.join(differ)}")
    return path


def load_features(path: Path) -> dict:
    try:
        return torch.load(path)
    except Exception as e:  # truncated, not a torch file, or not a features dict
        raise DataError(f"{path} is not a readable features file ({type(e).__name__})") from None


def probe_results(cfg: ProbeConfig, cached: dict, names: list[str], run: Run) -> dict:
    """The trained linear layer on the test clips: for speed, per clip (each test video at
    each rate); for action, per video (its clips' mean logits)."""
    test = cached["test"]
    with torch.no_grad():
        logits = unwrap(run.model)(test["output"].to(run.runtime.device)).float().cpu()
    labels, video = test["rate"], test["video"]
    if cfg.target == "action":
        logits, video = video_mean(logits, test["video"])
        labels = test["label"][first_of_each(test["video"], video)]
    return {
        "kind": cfg.task,
        **accuracy_report(logits, labels, video, cached["test_groups"], names, cfg.seed),
        "views_dropped": cached["views_dropped"],
    }


def probe_features(
    cfg: ProbeConfig,
    runtime: Runtime,
    index,
    progress: bool,
    done: dict | None = None,
    partial: Path | None = None,
) -> dict:
    """The frozen backbone's pooled features of the probe's training and test clips (their
    motion energy for `init="motion-energy"`), after `refit_bn` if asked. `done`: the features
    of a pass cut short, which this one goes on from; Ctrl-C saves what is done to `partial`
    and raises RunInterrupted."""
    mode = "prp" if cfg.target == "speed" else "clip"
    per_video = len(RATES) if mode == "prp" else 1
    train_views = per_video * cfg.train_views
    test_views = per_video if mode == "prp" else cfg.test_views
    sets = {
        "train": clip_dataset(cfg, index.train, mode, train_views, train=False),
        "test": clip_dataset(cfg, index.test, mode, test_views, train=False),
    }
    if cfg.init == MOTION_ENERGY:
        feature: nn.Module = MotionEnergy()
    else:
        feature = runtime.prepare(BackboneFeature(initial_backbone(cfg)))
    if cfg.refit_bn:
        refit_batchnorm(feature, sets["train"], cfg, runtime, progress)
    cached = {}
    for name, ds in sets.items():
        desc, before = f"features of {name} clips", (done or {}).get(name)
        if runtime.is_main:  # one line, bar or not: a log shows this phase too
            kept = f" ({len(before['output'])} done before)" if before else ""
            say(f"caching the frozen features of {len(ds)} {name} clips{kept}")
        try:
            cached[name] = frozen_outputs(feature, ds, runtime, desc, cfg.workers, progress, before)
        except CachingInterrupted as stopped:
            if partial is None:
                raise
            if runtime.is_main:
                torch.save({**cached, name: stopped.done}, partial)
            raise RunInterrupted(partial) from None
    cached["views_dropped"] = {name: ds.views_dropped for name, ds in sets.items()}
    return cached


def refit_batchnorm(
    backbone: nn.Module, clips: VideoDataset, cfg: ProbeConfig, runtime: Runtime, progress: bool
) -> None:
    """Reset the backbone's BatchNorm running statistics and re-estimate them as a cumulative
    average over `cfg.refit_bn` batches of `clips` (shuffled, seeded, at most one pass), with
    no gradients and the weights untouched (engine.precise_bn). Every rank reads the same
    batches, so the features do not depend on the number of processes."""
    sampler = EpochSampler(len(clips), cfg.seed)
    loader = make_loader(clips, sampler, cfg.batch_size, cfg.workers, runtime, drop_last=True)
    batches = training_clips(loader, cfg.refit_bn, runtime, RunState())
    total = loader_clips(loader, cfg.refit_bn)
    precise_bn(
        backbone,
        phase(batches, "BatchNorm statistics of train clips", total, progress, runtime),
        runtime,
    )


class MotionEnergy(nn.Module):
    """A clip's log mean squared difference between consecutive frames, (B, 3, T, H, W) in
    [0, 1] -> (B, 1): the faster a clip plays, the more its frames differ."""

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        energy = (clip[:, :, 1:] - clip[:, :, :-1]).float().square().mean((1, 2, 3, 4))
        return energy.clamp_min(1e-10).log()[:, None]  # a still clip: finite, very low


def probe_step(model: nn.Module, batch: dict, head: str) -> StepOutput:
    logits = model(batch["feature"])  # (B, classes)
    loss = F.cross_entropy(logits.float(), batch["label"])
    heads = {head: (logits, batch["label"])}
    if head == "speed":
        heads["at_rate"] = heads["speed"]
    return loss, {"ce": loss.detach()}, heads


class Standardize(nn.Module):
    """(x - mean) / std per feature dimension, with the statistics fixed (buffers). Plain SGD
    with one learning rate moves a linear layer in proportion to its inputs' square scale, so
    without this a probe ranks features by their scale as much as by what they hold."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp_min(1e-12).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
