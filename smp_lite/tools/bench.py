"""`smp-lite bench` (`make bench`): where the time of a pretraining step goes, each part
measured alone, in one run on one machine, so that the ratios between them hold.

- peak: the device's matmul throughput in the run's precision (the roofline);
- compute: forward, backward and SGD of a task's model on one batch kept on the device
  ("bare"), and the same batch through the training loop's step (`engine.train_steps`: the
  copy to the device, the finite-loss and gradient checks, the metrics); FLOPs per clip from
  torch's flop counter, and the share of the peak they reach;
- loader: `VideoDataset` through a `DataLoader` alone, per playback rate and worker count;
- original: the original PRP/SMP code's style, the baseline: its loading of the same files in
  one process (all 16*s + 1 frames decoded at full size, each resized with PIL, the clip,
  target and DPAU mask built per sample in float32; method.md section 7), and its compute
  (fp32 at `original_batch`, no channels_last);
- step: `train()` itself, one epoch of `step_batches` batches, loader included.

Timings are wall clock after a warm-up, on a GPU between synchronisations. No number is
checked against a target (docs/benchmarks.md holds the targets).
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

# isort: split
import decord  # after torch: decord's CUDA NVBLAS would take over torch's CPU BLAS and crash

from ..config import RATES, BenchConfig, TrainConfig, check_settings
from ..data import VideoDataset, sample_dilated_clip
from ..harness.batches import EpochSampler
from ..harness.engine import make_loader, train_steps
from ..harness.runtime import Runtime, loader_workers, make_runtime
from ..index import load_index
from ..masks import rescale_per_map
from ..models import NUM_RATES
from ..train import build_model, make_config, make_optimizer, make_step, task_metrics, train
from .synth import ensure_default_dataset

SECTION_START = "<!-- smp-lite bench: start -->"  # `--write` replaces what lies between these
SECTION_END = "<!-- smp-lite bench: end -->"


def bench(cfg: BenchConfig, progress: bool = True) -> dict:
    """Measure every part; returns the numbers `format_report` prints."""
    check_settings(cfg)
    runtime = make_runtime(cfg.device)
    ensure_default_dataset(cfg.data)
    preset = cfg.preset or ("paper" if runtime.device.type == "cuda" else "quick")
    sizes = task_config(cfg, preset, "smp")  # refuses a bad clip size before anything is timed
    say = print if progress else (lambda *_: None)
    peak = matmul_peak(runtime)
    say(f"matmul peak: {peak / 1e12:.2f} TFLOP/s ({runtime.precision})")
    results: dict = {"machine": machine(runtime), "preset": preset, "peak_flops": peak}
    h, w = sizes.resize
    results["clip"] = f"{sizes.clip_len}x{sizes.crop}x{sizes.crop} from {h}x{w}"
    results["batch_size"] = cfg.batch_size
    results["compute"] = []
    for arch, task in itertools.product(cfg.archs, cfg.tasks):
        tcfg = task_config(cfg, preset, task, arch=arch)
        for variant in ["", *cfg.variants]:
            row = {"arch": arch, "task": task, "variant": variant}
            row |= compute_alone(tcfg, runtime, cfg.steps, peak, variant)
            say(f"compute {arch} {task}: {row}")
            results["compute"].append(row)
    first = task_config(cfg, preset, cfg.tasks[0], batch_size=cfg.original_batch)
    fp32 = replace(runtime, precision="fp32", channels_last=False, compile=False)
    original = {"arch": first.arch, "task": first.task, "batch_size": cfg.original_batch}
    results["original_compute"] = original | compute_alone(first, fp32, cfg.steps, peak)
    say(f"compute, original style (fp32, no channels_last): {results['original_compute']}")
    results["loader"] = loader_rows(cfg, sizes, runtime, say)
    if cfg.step_batches:
        results["step"] = end_to_end(cfg, preset, runtime)
        say(f"end-to-end: {results['step']}")
    return results


def task_config(cfg: BenchConfig, preset: str, task: str, **overrides) -> TrainConfig:
    """The pretraining config whose step is timed: the preset's clips unless the bench sets its
    own, the first backbone, the bench's batch size."""
    sizes = {k: getattr(cfg, k) for k in ("clip_len", "resize", "crop") if getattr(cfg, k)}
    settings = dict(data=cfg.data, preset=preset, arch=cfg.archs[0], batch_size=cfg.batch_size)
    return make_config(task, **settings | sizes | overrides)


def machine(runtime: Runtime) -> str:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    gpu = f"{torch.cuda.get_device_name(runtime.device)}, " if runtime.device.type == "cuda" else ""
    return f"{gpu}{cpu} ({os.cpu_count()} cores), torch {torch.__version__}"


def synchronize(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


def matmul_peak(runtime: Runtime) -> float:
    """FLOP/s of a square matmul in the run's precision: the most this device can do. The best
    of 3 rounds (one round alone varied by 15% on the 2-core CPU), the first after a warm-up."""
    n = 8192 if runtime.device.type == "cuda" else 2048
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(runtime.precision, torch.float32)
    a = torch.randn(n, n, device=runtime.device, dtype=dtype)
    b = torch.randn(n, n, device=runtime.device, dtype=dtype)
    seconds = min(timed(lambda: a @ b, 10, runtime, warmup=int(i == 0)) for i in range(3))
    return 2 * n**3 / seconds


def synthetic_batch(cfg: TrainConfig, classes: int) -> dict[str, torch.Tensor]:
    """A batch shaped as the loader's (uint8 clips on the CPU), of random content."""
    g = torch.Generator().manual_seed(0)
    b, t, c = cfg.batch_size, cfg.clip_len, cfg.crop
    batch = {
        "clip": torch.randint(0, 256, (b, 3, t, c, c), generator=g, dtype=torch.uint8),
        "label": torch.randint(0, classes, (b,), generator=g),
    }
    if cfg.task != "supervised":
        batch["target"] = torch.randint(0, 256, (b, 3, 2 * t, c, c), generator=g).to(torch.uint8)
        batch["target_weight"] = torch.ones(b, 2 * t)
        batch["dpau"] = 0.8 + 1.2 * torch.rand(b, 3, 2 * t, 13, 13, generator=g)
        batch["rate"] = torch.randint(0, NUM_RATES, (b,), generator=g)
    return batch


def compute_alone(
    cfg: TrainConfig, runtime: Runtime, steps: int, peak: float, variant: str = ""
) -> dict:
    """Clips/s of the task's step on one batch, bare and through the loop, with the FLOPs;
    `variant` "fused" steps a fused SGD, "eager" and "compiled" turn torch.compile off or on."""
    if variant in ("eager", "compiled"):
        runtime = replace(runtime, compile=variant == "compiled")
    classes = 101  # UCF101's: the supervised head's size
    torch.manual_seed(cfg.seed)
    model = runtime.prepare(build_model(cfg, classes))
    optimizer = make_optimizer(model, cfg)
    if variant == "fused":  # new groups: the old ones' "fused": None would override fused=True
        groups = [{"params": g["params"], "lr": g["lr"]} for g in optimizer.param_groups]
        optimizer = torch.optim.SGD(
            groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True
        )
    step = make_step(cfg, epoch=0)
    cpu_batch = synthetic_batch(cfg, classes)
    batch = runtime.to_device(cpu_batch)
    with FlopCounterMode(display=False) as counter:
        bare_step(model, batch, step, optimizer, runtime)
    flops = counter.get_total_flops() / cfg.batch_size  # forward + backward, per clip
    model = runtime.wrap(model)  # torch.compile where the run would, after the count
    bare = timed(lambda: bare_step(model, batch, step, optimizer, runtime), steps, runtime)
    metrics = task_metrics(cfg, classes).to(runtime.device)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    if runtime.device.type == "cuda":  # in pinned memory, as the loader hands batches over
        cpu_batch = {k: v.pin_memory() for k, v in cpu_batch.items()}
    batches = [cpu_batch] * steps  # one pass: each batch's copy overlaps the step before

    def loop_steps() -> None:
        for _ in train_steps(model, batches, step, optimizer, scaler, metrics, runtime, set()):
            pass

    loop = timed(loop_steps, 1, runtime, warmup=1) / steps
    per_s = cfg.batch_size / bare
    return {
        "gflop_per_clip": flops / 1e9,
        "bare_clips_per_s": per_s,
        "loop_clips_per_s": cfg.batch_size / loop,
        "peak_share": flops * per_s / peak,
    }


def bare_step(model, batch: dict, step, optimizer, runtime: Runtime) -> None:
    model.train()
    with runtime.autocast():
        loss = step(model, batch)[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn, steps: int, runtime: Runtime, warmup: int = 2) -> float:
    """Seconds per call of `fn`, after `warmup` calls (cudnn autotuning, oneDNN primitives)."""
    for _ in range(warmup):
        fn()
    synchronize(runtime)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(runtime)
    return (time.perf_counter() - t0) / steps


def loader_rows(cfg: BenchConfig, sizes: TrainConfig, runtime: Runtime, say) -> list[dict]:
    """Per rate, then with the rates mixed as training draws them ("mixed"): our loader with
    each worker count, and the original code's style, on the same training videos (frame
    counts read once per row)."""
    videos, rows = load_index(cfg.data).train, []
    mixed = [tuple(cfg.rates)] if len(cfg.rates) > 1 else []
    for rates in [(r,) for r in cfg.rates] + mixed:
        rate = rates[0] if len(rates) == 1 else "mixed"
        dataset = VideoDataset(
            videos,
            mode="prp",
            clip_len=sizes.clip_len,
            resize=sizes.resize,
            crop=sizes.crop,
            rates=rates,
            workers=2,
        )
        settings = itertools.product(cfg.workers, cfg.clips_per_video)
        for workers, repeats in [*settings, ("original", 1)]:
            if workers == "original":
                per_s = original_style_loader(dataset, cfg.original_batch, cfg.loader_batches)
            else:
                per_s = loader_alone(dataset, workers, repeats, cfg, runtime)
            row = {"rate": rate, "workers": workers, "clips_per_video": repeats}
            rows.append(row | {"clips_per_s": per_s})
            say(f"loader at rate {rate}, {loader_column(row)}: {per_s:.1f} clips/s")
    return rows


def loader_column(row: dict) -> str:
    if row["workers"] == "original":
        return "original style"
    repeats = row["clips_per_video"]
    return f"{row['workers']} workers" + (f", {repeats} clips a video" if repeats > 1 else "")


def loader_alone(
    dataset: VideoDataset, workers: int, repeats: int, cfg: BenchConfig, runtime: Runtime
) -> float:
    """Steady clips/s of the dataset's samples through a DataLoader (`repeats` clips from each
    decoded video): timed from the end of the workers' first round (each worker's first batch,
    made together with the start-up) over whole rounds, `loader_batches` batches at least."""
    sampler = EpochSampler(len(dataset), seed=0, repeats=repeats)
    loader = make_loader(dataset, sampler, cfg.batch_size, workers, runtime, drop_last=True)
    first_round = max(workers, 1)
    timed_batches = -(-cfg.loader_batches // first_round) * first_round
    clips, seen, t0 = 0, 0, 0.0
    for epoch in itertools.count():  # as many epochs as the batches need
        sampler.set_epoch(epoch)
        for batch in loader:
            seen += 1
            if seen == first_round:
                t0 = time.perf_counter()
            elif seen > first_round:
                clips += len(batch["clip"])
            if seen == first_round + timed_batches:
                return clips / (time.perf_counter() - t0)


def original_style_loader(dataset: VideoDataset, batch: int, batches: int) -> float:
    """Clips/s of the original code's loading style, one process (see the module's doc), for
    the dataset's videos, rates (one drawn per sample) and clip sizes."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(batches):
        samples = []
        for rate in rng.choice(dataset.rates, batch):
            i = int(rng.choice(dataset.long_enough[rate]))
            samples.append(original_style_sample(dataset, i, int(rate), rng))
        torch.utils.data.default_collate(samples)
    return batch * batches / (time.perf_counter() - t0)


def original_style_sample(dataset: VideoDataset, index: int, rate: int, rng) -> dict:
    """A rate-`rate` sample of video `index` as the original code built it (the module's doc)."""
    video, num_frames = dataset.videos[index], dataset.frames[index]
    clip_len, (h, w), c = dataset.clip_len, dataset.resize, dataset.crop
    start = int(rng.integers(num_frames - clip_len * rate))
    reader = decord.VideoReader(str(video.path), num_threads=1)
    frames = reader.get_batch(list(range(start, start + clip_len * rate + 1))).asnumpy()
    resized = np.stack(
        [np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames]
    )
    top, left = (h - c) // 2, (w - c) // 2
    frames = resized[:, top : top + c, left : left + c]
    ids = sample_dilated_clip(len(frames), rate, clip_len, 0)
    # the original's DPAU: avg_pool3d over the squared differences of each chunk of 4 frames,
    # rescaled into [0.8, 2] per map; (s, 3, 4, c, c) -> (3, s, 13, 13)
    chunks = float_clip(frames[ids.dpau.ravel()]).unflatten(1, (rate, 4)).transpose(0, 1)
    diff = (chunks[:, :, 1:] - chunks[:, :, :-1]).pow(2)
    pooled = F.avg_pool3d(diff, (3, c // 4, c // 4), stride=(3, c // 16, c // 16))[:, :, 0]
    dpau = rescale_per_map(pooled.flatten(2)).view_as(pooled).transpose(0, 1)
    return {
        "clip": float_clip(frames[ids.clip]),
        "target": float_clip(frames[ids.target]),
        "dpau": dpau.repeat_interleave(2 * clip_len // rate, 1),  # one map per target frame
        "rate": RATES.index(rate),
    }


def float_clip(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float in [0, 1], as the original code built its clips."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255


def end_to_end(cfg: BenchConfig, preset: str, runtime: Runtime) -> dict:
    """`train()` on the first arch and task (no validation, no mid-epoch saves): the clips/s of
    one epoch of `step_batches` batches, and the steady clips/s from its difference with an
    epoch a quarter as long, where the start-up, the same in both, cancels out. A one-batch
    epoch first warms the caches (torch.compile's graphs, cuDNN's kernel choice)."""
    long, short = cfg.step_batches, max(cfg.step_batches // 4, 1)
    seconds: list[float] = []  # of the warm-up, short and long epochs
    with tempfile.TemporaryDirectory() as tmp:
        data = repeated_list(cfg.data, long * cfg.batch_size, Path(tmp))
        for batches in (1, short, long):  # the first warms the caches
            tcfg = task_config(
                cfg,
                preset,
                cfg.tasks[0],
                data=data,
                device=cfg.device,
                epochs=1,
                limit_batches=batches,
                val_fraction=0.0,
                precise_bn=0,
                save_every=0,
                workers=cfg.step_workers,
                out=f"{tmp}/run-{len(seconds)}",
            )
            row = train(tcfg, progress=False)
            seconds.append(batches * cfg.batch_size / row["clips_per_s"])
    extra = seconds[2] - seconds[1]  # the long epoch's time less the short one's
    steady = (long - short) * cfg.batch_size / extra if long > short and extra > 0 else math.nan
    return {
        "arch": cfg.archs[0],
        "task": cfg.tasks[0],
        "workers": loader_workers(cfg.step_workers, runtime),
        "batches": long,
        "clips_per_s": long * cfg.batch_size / seconds[2],
        "steady_clips_per_s": steady,
    }


def repeated_list(data: str, clips: int, folder: Path) -> str:
    """`data`'s training videos as a CSV list, repeated to `clips` rows at least: an epoch as
    long as the bench needs, on a small dataset."""
    index = load_index(data)
    repeats = -(-clips // len(index.train))
    path = folder / "train.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        rows = [(str(v.path.resolve()), index.classes[v.label]) for v in index.train]
        writer.writerows(rows * repeats)
    return str(path)


def format_report(results: dict, command: str) -> str:
    """The numbers as markdown: the machine, then one table per part."""
    lines = [
        f"`{command}` on {results['machine']}; {results['preset']} preset clips "
        f"({results['clip']}), batch {results['batch_size']}. Matmul peak measured in the same "
        f"run: {results['peak_flops'] / 1e12:.2f} TFLOP/s.",
        "",
        "| arch | task | variant | GFLOP per clip (fwd+bwd) | compute alone, clips/s | "
        "share of peak | through the loop's step, clips/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["compute"]:
        lines.append(
            f"| `{r['arch']}` | {r['task']} | {r['variant'] or 'as trained'} | "
            f"{r['gflop_per_clip']:.1f} | {r['bare_clips_per_s']:.1f} | "
            f"{100 * r['peak_share']:.1f}% | {r['loop_clips_per_s']:.1f} |"
        )
    o = results["original_compute"]
    lines += [
        "",
        f"Compute in the original code's style ({o['task']} `{o['arch']}`, fp32, batch "
        f"{o['batch_size']}, no channels_last): {o['bare_clips_per_s']:.1f} clips/s, "
        f"{100 * o['peak_share']:.1f}% of the peak above.",
    ]
    columns = list(dict.fromkeys(map(loader_column, results["loader"])))  # 0 workers, ...
    lines += [
        "",
        "Loader alone, PRP training samples, clips/s (original style: one process; mixed: "
        "a rate drawn per sample, as training does):",
        "",
        "| rate | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for rate in dict.fromkeys(r["rate"] for r in results["loader"]):  # 1, 2, ..., mixed
        cells = {loader_column(r): r["clips_per_s"] for r in results["loader"] if r["rate"] == rate}
        lines.append(f"| {rate} | " + " | ".join(f"{cells[w]:.1f}" for w in columns) + " |")
    if "step" in results:
        s = results["step"]
        lines += [
            "",
            f"End to end, `train()` on {s['task']} `{s['arch']}` with {s['workers']} workers, "
            f"one epoch of {s['batches']} batches: {s['clips_per_s']:.1f} clips/s; steady "
            f"(the start-up cancelled against an epoch a quarter as long): "
            f"{s['steady_clips_per_s']:.1f} clips/s.",
        ]
    return "\n".join(lines) + "\n"


def write_section(markdown: Path, text: str) -> None:
    """Put `text` between the bench markers of `markdown` (appended with them if absent)."""
    old = markdown.read_text() if markdown.is_file() else ""
    block = f"{SECTION_START}\n{text}{SECTION_END}"
    if SECTION_START in old and SECTION_END in old:
        head, rest = old.split(SECTION_START, 1)
        new = head + block + rest.split(SECTION_END, 1)[1]
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + block + "\n"
    markdown.write_text(new)


def bench_config(**overrides) -> BenchConfig:
    """A BenchConfig; an override of None keeps the default."""
    return replace(BenchConfig(), **{k: v for k, v in overrides.items() if v is not None})
