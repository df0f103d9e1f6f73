"""Evaluation of a backbone (method.md sections 4-5): what the linear probe, fine-tuning and
retrieval share, and the latter two.

- `probe(cfg)` (probe.py): the backbone frozen, a new linear layer on its pooled c5 feature
  learns the playback rate (`target="speed"`, the seed's Table 1) or the action
  (`target="action"`);
- `finetune(cfg)`: the whole network trained on action labels, tested with 10 clips per video;
- `retrieve(cfg)`: test videos query the training videos by the cosine similarity of their
  retrieval features; top-k hit rates.

Each takes `init`: "random", a checkpoint (a smp-lite one of any task, or the original
PRP/SMP code's weights) or a run folder (its best.pt, else last.pt), and the speed probe also
"motion-energy", a baseline with no network (probe.py); `latest_pretraining` finds what the
command line evaluates when given no --init. Each writes a run folder: config.json,
results.json (every number, each test item's correctness for paired comparisons, the time it
took, the device), and for the trained ones metrics.jsonl and last.pt, resumable like
pretraining (they run on the engine's loop).
Here: their configs (`make_eval_config`) and the refusals before a run (`checked_eval`; the
run itself starts in harness/launch.py), a frozen model's outputs over a dataset
(`frozen_outputs`), and the reports.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from .config import (
    DEFAULT_DATA,
    EVAL_PRESETS,
    MOTION_ENERGY,
    TASKS,
    EvalConfig,
    FinetuneConfig,
    ProbeConfig,
    RetrieveConfig,
    check_run_settings,
)
from .data import VideoDataset
from .errors import ConfigError
from .harness.batches import EpochSampler, to_float
from .harness.checkpoint import BEST, CONFIG, LAST, load_backbone
from .harness.engine import Run, loss_metrics, make_loader, phase
from .harness.folders import write_results
from .harness.launch import Parts, fit_parts, started
from .harness.runtime import Runtime, unwrap
from .index import DatasetIndex, load_index
from .models import ActionNet, build_backbone, pooled_feature, retrieval_feature
from .train import accuracy_at_rate, as_settings, is_generated, supervised_step

TOP_K = (1, 5, 10, 20, 50)

# ---------------------------------------------------------------------------------------------
# Configuration


def make_eval_config(kind: str, preset: str | None = None, **overrides) -> EvalConfig:
    """The config of evaluation `kind` (probe, finetune, retrieve) from a preset (quick on
    generated data, paper on real data) and overrides; an override of None keeps the preset's."""
    overrides = as_settings(overrides)
    if "init" in overrides:
        overrides["init"] = init_file(overrides["init"])
    preset = preset or ("quick" if is_generated(overrides.get("data", DEFAULT_DATA)) else "paper")
    if preset not in EVAL_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(EVAL_PRESETS)}")
    base = EVAL_PRESETS[preset][kind]
    unknown = set(overrides) - set(asdict(base))
    if unknown:
        raise ConfigError(f"unknown settings for {kind}: {', '.join(sorted(unknown))}")
    cfg = replace(base, **overrides)
    validate_eval(cfg)
    return cfg


def init_file(init: str) -> str:
    """`init` with a run folder replaced by its checkpoint: best.pt, else last.pt (fine-tuning
    keeps no best.pt, nor does a pretraining stopped in its first epoch). A folder with neither,
    or a probe's (its last.pt is the linear layer, no backbone), is refused in one line."""
    path = Path(init)
    if init in ("", "random", MOTION_ENERGY) or not path.is_dir():
        return init  # a file, or a path that validate_eval refuses
    task = str(run_config(path).get("task", ""))
    if task.startswith("probe"):
        raise ConfigError(
            f"--init {init}: a {task} run holds a linear layer, not a backbone: give a "
            "pretraining or fine-tuning run"
        )
    for name in (BEST, LAST):
        if (path / name).is_file():
            return str(path / name)
    raise ConfigError(
        f"--init {init}: a folder without {BEST} or {LAST}, so no backbone to start from: give "
        "a pretraining or fine-tuning run folder, a checkpoint file, or random"
    )


def latest_pretraining(arch: str, runs: str | Path = "runs") -> Path | None:
    """The best.pt saved last among the pretraining runs of `arch` under `runs`, at any depth
    (make reproduce and the tutorials keep theirs in subfolders), or None: what `smp-lite
    probe`, `finetune` and `retrieve` evaluate when given no --init."""
    found = []
    for folder, subfolders, files in os.walk(runs):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]  # .previous: replaced
        if BEST in files and CONFIG in files:
            config = run_config(Path(folder))
            if config.get("task") in TASKS and config.get("arch") == arch:
                found.append(Path(folder) / BEST)
    # the path breaks ties: the same answer whatever order the file system lists folders in
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)), default=None)


def run_config(folder: Path) -> dict:
    """A run folder's config.json, or {} where there is none readable."""
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def validate_eval(cfg: EvalConfig) -> None:
    """Refuse a setting no evaluation can use: each field's own check (config.py), then those of
    several fields together."""
    check_run_settings(cfg)
    checks = [
        (
            cfg.init in ("random", MOTION_ENERGY) or Path(cfg.init).is_file(),
            f"--init {cfg.init}: no such checkpoint file or run folder (or 'random')",
        ),
        (
            cfg.init != MOTION_ENERGY or isinstance(cfg, ProbeConfig) and cfg.target == "speed",
            f"--init {MOTION_ENERGY} (no network) is a baseline of the speed probe only",
        ),
        (
            not (isinstance(cfg, ProbeConfig) and cfg.refit_bn and cfg.init == MOTION_ENERGY),
            f"--refit-bn needs a network: --init {MOTION_ENERGY} has none",
        ),
        (  # the loop would look for a BatchNorm loader the probe does not have
            not (isinstance(cfg, ProbeConfig) and cfg.precise_bn),
            "--precise-bn is for fine-tuning: the probe's BatchNorm is the frozen backbone's "
            "(--refit-bn)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def eval_out(cfg: EvalConfig) -> Path:
    """`out`, or runs/<kind>-<arch>-<init>: the init's run folder name, or "random";
    runs/probe-speed-motion-energy for the baseline with no network."""
    if cfg.out:
        return Path(cfg.out)
    if cfg.init == MOTION_ENERGY:
        return Path("runs") / f"{cfg.task}-{MOTION_ENERGY}"
    init = "random" if cfg.init == "random" else Path(cfg.init).resolve().parent.name
    return Path("runs") / f"{cfg.task}-{cfg.arch}-{init}"


# ---------------------------------------------------------------------------------------------
# Shared steps


def checked_eval(cfg: EvalConfig) -> Path:
    """The run folder, after the refusals that come before any work (a wrong checkpoint)."""
    validate_eval(cfg)
    if cfg.init not in ("random", MOTION_ENERGY):  # refused before any data is read or made
        load_backbone(build_backbone(cfg.arch), cfg.init, cfg.arch)
    return eval_out(cfg)


def initial_backbone(cfg: EvalConfig) -> nn.Module:
    """The backbone to evaluate: seeded random weights, or those of the `init` checkpoint."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.arch, cfg.weight_init)
    if cfg.init != "random":
        load_backbone(backbone, cfg.init, cfg.arch)
    return backbone


def clip_dataset(cfg: EvalConfig, videos: tuple, mode: str, views: int, **kw) -> VideoDataset:
    return VideoDataset(
        videos,
        mode=mode,
        clip_len=cfg.clip_len,
        resize=cfg.resize,
        crop=cfg.crop,
        seed=cfg.seed,
        views=views,
        workers=cfg.workers,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# Frozen features


@torch.no_grad()
def frozen_outputs(
    fn: nn.Module,
    dataset: VideoDataset,
    runtime: Runtime,
    desc: str,
    workers: int,
    progress: bool,
    before: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """`fn` (a model or `backbone_feature`) on every item of `dataset` (views of its videos):
    "output" (N, D) float32, "label", "rate" (rate index in prp mode, else the label) and
    "video" (the index of the video the item was read from). `before`: the outputs of the first
    items, computed earlier; the pass goes on after them. Under a bar named `desc` with
    `progress`, else one line once done (engine.phase). Ctrl-C raises CachingInterrupted
    with the outputs so far."""
    fn.eval()
    sampler = EpochSampler(len(dataset), shuffle=False)
    parts: dict[str, list[torch.Tensor]] = {
        key: [before[key]] if before else [] for key in ("output", "label", "rate", "video")
    }
    sampler.set_epoch(0, skip=len(before["output"]) if before else 0)
    loader = make_loader(dataset, sampler, 16, workers, runtime, False)
    try:
        for batch in phase(loader, desc, len(sampler), progress, runtime):
            batch = runtime.to_device(batch)
            with runtime.autocast():
                output = fn(to_float(batch["clip"])).float().cpu()
            parts["output"].append(output)
            parts["label"].append(batch["label"].cpu())
            parts["rate"].append(batch.get("rate", batch["label"]).cpu())
            parts["video"].append(batch["index"].cpu())
    except KeyboardInterrupt:
        raise CachingInterrupted(concat(parts)) from None
    return concat(parts)


def concat(parts: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}


class CachingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `frozen_outputs`, with the outputs of the items done (`done`)."""

    def __init__(self, done: dict[str, torch.Tensor]) -> None:
        super().__init__("interrupted while caching features")
        self.done = done


class BackboneFeature(nn.Module):
    """A backbone's clip feature: the pooled c5 (512-d) or VCOP's retrieval feature."""

    def __init__(self, backbone: nn.Module, kind: str = "pooled") -> None:
        super().__init__()
        self.backbone, self.kind = backbone, kind

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        c5 = self.backbone(clip)[-1]  # (B, 512, T/8, H/16, W/16)
        return pooled_feature(c5) if self.kind == "pooled" else retrieval_feature(c5)


class FeatureSet(Dataset):
    """Cached features as samples {"feature", "label"} for the engine's loop; `views_dropped`
    counts the views of the videos they come from that did not fit."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, views_dropped: int) -> None:
        self.features, self.labels, self.views_dropped = features, labels, views_dropped

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        return {"feature": self.features[index], "label": self.labels[index]}


def test_groups(index) -> list[str]:
    """Each test video's group (what the spreads resample, `bootstrap_std`)."""
    return [v.group for v in index.test]


def video_mean(values: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the rows of `values` (N, D) per video id: (videos, D) and the ids, sorted."""
    ids, where = torch.unique(video, return_inverse=True)
    sums = torch.zeros(len(ids), values.shape[1]).index_add_(0, where, values.float())
    counts = torch.bincount(where, minlength=len(ids)).clamp_min(1)
    return sums / counts[:, None], ids


def first_of_each(video: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """For each id (sorted, as torch.unique gives them), the position of its first row."""
    order = torch.argsort(video, stable=True)
    starts = torch.searchsorted(video[order], ids)
    return order[starts]


def same_step(epoch: int, training: bool, step):
    """A task whose step is the same at every epoch, training or not."""
    return step


def classifier_metrics(head: str, classes: int) -> MetricCollection:
    """An evaluation's metrics: the loss, the accuracy, and for the speed head each rate's."""
    metrics = loss_metrics(["ce"])
    metrics[f"acc_{head}"] = MulticlassAccuracy(classes, average="micro", validate_args=False)
    if head == "speed":
        metrics["acc_at_rate"] = accuracy_at_rate()
    return MetricCollection(metrics, compute_groups=False)


def summary(results: dict) -> str:
    """One line of an evaluation's results."""
    if "top_k" in results:
        return "top-k " + ", ".join(f"{k}: {100 * v:.1f}%" for k, v in results["top_k"].items())
    return (
        f"accuracy {100 * results['accuracy']:.1f}% +- {100 * results['accuracy_std']:.1f} "
        f"over {results['items']} test items"
    )


def bootstrap_std(
    values: torch.Tensor, video: torch.Tensor, group: list[str], seed: int, n: int = 1000
) -> float:
    """Standard deviation of the mean of `values` (one per test item, e.g. 0/1 correctness) over
    `n` two-level resamplings: the test groups with replacement, then the videos within each
    drawn group with replacement, every item of a drawn video counted. A group's videos share
    their look and camera (UCF101's gGG), so they are not independent draws: resampling videos
    alone understates the spread. With one video per group it is the plain video bootstrap."""
    vids, where = torch.unique(video, return_inverse=True)
    sums = torch.zeros(len(vids), dtype=torch.float64).index_add_(0, where, values.double())
    counts = torch.bincount(where, minlength=len(vids)).double()
    group_of = {int(v): g for v, g in zip(video.tolist(), group, strict=True)}
    names = sorted(set(group_of.values()))
    members = [
        torch.tensor([i for i, v in enumerate(vids.tolist()) if group_of[v] == g]) for g in names
    ]
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(names), (n, len(names)), generator=gen)  # groups drawn
    total_sum = torch.zeros(n, dtype=torch.float64)
    total_count = torch.zeros(n, dtype=torch.float64)
    for g, videos in enumerate(members):
        # a group drawn k times gives k * m videos drawn among its m: k resamplings of it
        times = (picks == g).sum(1)  # (n,)
        m = len(videos)
        draws = videos[torch.randint(m, (n, int(times.max()) * m), generator=gen)]
        used = torch.arange(draws.shape[1]) < (times * m)[:, None]  # (n, max draws)
        total_sum += (sums[draws] * used).sum(1)
        total_count += (counts[draws] * used).sum(1)
    return (total_sum / total_count).std().item()


def paired_bootstrap_std(
    correct_a: torch.Tensor,
    correct_b: torch.Tensor,
    video: torch.Tensor,
    group: list[str],
    seed: int,
    n: int = 1000,
) -> float:
    """Standard deviation of accuracy a - accuracy b under `bootstrap_std`'s resampling, the same
    groups and videos drawn for both (items aligned). Two models tested on the same videos find
    the same ones hard, so the difference varies less than either accuracy."""
    return bootstrap_std(correct_a.float() - correct_b.float(), video, group, seed, n)


def accuracy_report(
    logits: torch.Tensor,
    labels: torch.Tensor,
    video: torch.Tensor,
    groups: list[str],
    names: list[str],
    seed: int,
) -> dict:
    """Accuracy with its bootstrap spread, accuracy per class, the confusion matrix, and each
    test item's correctness (0/1), video and group (`groups`: each test video's): what a paired
    comparison of two runs needs."""
    group = [groups[v] for v in video.tolist()]
    k = len(names)
    correct = logits.argmax(1) == labels
    per_class = MulticlassAccuracy(k, average="none")(logits, labels)
    confusion = MulticlassConfusionMatrix(k)
    return {
        "accuracy": correct.float().mean().item(),
        "accuracy_std": bootstrap_std(correct.float(), video, group, seed),
        "items": len(labels),
        "per_class": dict(zip(names, per_class.tolist(), strict=True)),
        "confusion": confusion(logits, labels).tolist(),  # rows: true class, columns: predicted
        "correct": correct.int().tolist(),
        "video": video.tolist(),
        "group": group,
    }


# ---------------------------------------------------------------------------------------------
# Fine-tuning


def finetune(cfg: FinetuneConfig, progress: bool = True) -> dict:
    """Train the whole network on action labels; test with `test_views` clips per test video
    (centre crop, logits averaged). Returns results.json."""
    out = checked_eval(cfg)
    with started(cfg, out, load_index) as (cfg, runtime, index, t0):
        parts = finetuning_parts(cfg, runtime, index, progress)
        return fit_parts(cfg, parts, runtime, out, progress, t0)


def finetuning_parts(
    cfg: FinetuneConfig, runtime: Runtime, index: DatasetIndex, progress: bool
) -> Parts:
    train_set = clip_dataset(cfg, index.train, "clip", 1, train=True, random_crop=True)
    backbone = initial_backbone(cfg)  # seeds first: the new head's weights follow from the seed
    model = ActionNet(cfg.arch, len(index.classes), weight_init=cfg.weight_init)
    model.backbone = backbone
    model = runtime.prepare(model)
    return Parts(
        classes=index.classes,
        datasets={"train": train_set, "bn": train_set},
        model=model,
        optimizer=torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        ),
        schedule=functools.partial(step_down, epoch=cfg.lr_step_epoch),
        step_for=functools.partial(same_step, step=supervised_step),
        metrics=classifier_metrics("action", len(index.classes)),
        workers=cfg.workers,
        keep_best=False,
        results=functools.partial(finetuning_results, cfg, index, runtime, progress),
    )


def step_down(optimizer: torch.optim.Optimizer, steps: int, epoch: int):
    """The learning rate x0.1 from `epoch` on (`steps`: the batches of an epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [epoch * steps], 0.1)


def finetuning_results(
    cfg: FinetuneConfig, index, runtime: Runtime, progress: bool, run: Run
) -> dict:
    """The fine-tuned network on `test_views` clips of each test video, logits averaged."""
    test_set = clip_dataset(cfg, index.test, "clip", cfg.test_views, train=False)
    clips = frozen_outputs(unwrap(run.model), test_set, runtime, "testing", cfg.workers, progress)
    logits, ids = video_mean(clips["output"], clips["video"])
    labels = clips["label"][first_of_each(clips["video"], ids)]
    return {
        "kind": "finetune",
        **accuracy_report(logits, labels, ids, test_groups(index), list(index.classes), cfg.seed),
        "views_dropped": test_set.views_dropped,
    }


# ---------------------------------------------------------------------------------------------
# Retrieval


def retrieve(cfg: RetrieveConfig, progress: bool = True) -> dict:
    """Test videos query the training videos; a query hits at k when one of its k nearest
    (cosine similarity of the clip-averaged retrieval features) has its class."""
    out = checked_eval(cfg)
    with started(cfg, out, load_index) as (cfg, runtime, index, t0):
        videos = retrieval_videos(cfg, runtime, index, progress)
        hits = retrieval_hits(videos["queries"][:2], videos["gallery"][:2], TOP_K)  # (Q, K)
        query_ids = videos["queries"][2]
        group = [test_groups(index)[v] for v in query_ids.tolist()]
        results = {
            "kind": "retrieve",
            "top_k": {str(k): hits[:, i].float().mean().item() for i, k in enumerate(TOP_K)},
            "top_k_std": {
                str(k): bootstrap_std(hits[:, i].float(), query_ids, group, cfg.seed)
                for i, k in enumerate(TOP_K)
            },
            "queries": len(videos["queries"][2]),
            "gallery": len(videos["gallery"][2]),
            # per query (test video), for paired comparisons: whether it hit at each k
            "hits": {str(k): hits[:, i].int().tolist() for i, k in enumerate(TOP_K)},
            "video": query_ids.tolist(),
            "group": group,
            "neighbours": neighbours(videos, index),
            "seconds": time.perf_counter() - t0,
            "device": str(runtime.device),
        }
        if runtime.is_main:
            write_results(out, results)
    return results


def retrieval_videos(
    cfg: RetrieveConfig, runtime: Runtime, index, progress: bool
) -> dict[str, tuple]:
    """{"gallery": training videos, "queries": test videos}, each (features, labels, ids)."""
    backbone = runtime.prepare(BackboneFeature(initial_backbone(cfg), kind="retrieval"))
    videos = {}
    for name, split in (("gallery", index.train), ("queries", index.test)):
        ds = clip_dataset(cfg, split, "clip", cfg.test_views, train=False)
        clips = frozen_outputs(
            backbone, ds, runtime, f"features of the {name}", cfg.workers, progress
        )
        features, ids = video_mean(clips["output"], clips["video"])
        videos[name] = (features, clips["label"][first_of_each(clips["video"], ids)], ids)
    return videos


def neighbours(videos: dict[str, tuple], index, k: int = 5) -> list[dict]:
    """Each query video and its `k` nearest training videos (paths under the dataset root) with
    their classes."""
    nearest = nearest_gallery(videos["queries"][0], videos["gallery"][0], k)  # (Q, k)
    gallery_ids = videos["gallery"][2].tolist()
    return [
        {
            "query": relative_name(index.test[q].path, index.root),
            "class": index.classes[index.test[q].label],
            "nearest": [relative_name(index.train[gallery_ids[g]].path, index.root) for g in row],
            "classes": [index.classes[index.train[gallery_ids[g]].label] for g in row],
        }
        for q, row in zip(videos["queries"][2].tolist(), nearest.tolist(), strict=True)
    ]


def relative_name(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def nearest_gallery(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, D) and (G, D) features -> (Q, min(k, G)) gallery rows, most cosine-similar first."""
    sims = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T  # (Q, G)
    return sims.topk(min(k, sims.shape[1]), dim=1).indices


def retrieval_hits(
    queries: tuple[torch.Tensor, torch.Tensor],
    gallery: tuple[torch.Tensor, torch.Tensor],
    ks: tuple[int, ...],
) -> torch.Tensor:
    """(features, labels) of queries and gallery -> (Q, len(ks)) bool: whether one of the k
    most cosine-similar gallery items has the query's class."""
    nearest = nearest_gallery(queries[0], gallery[0], max(ks))  # (Q, K)
    same = gallery[1][nearest] == queries[1][:, None]  # (Q, K)
    return torch.stack([same[:, :k].any(1) for k in ks], dim=1)
