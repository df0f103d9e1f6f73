"""Every run's settings, each declared once: its type and default, the help `--help` shows, its
check, the values it chooses from, and whether a resume keeps it. Torch-free, so that
`smp-lite --help` starts in a fraction of a second.

The dataclass configs of pretraining (train.py), evaluation (evaluate.py, probe.py) and the
benchmark (tools/bench.py), and their presets. The command line builds one option per field
from here (cli.py); `check_settings` applies each field's check; a resume refuses a change to a
field declared `keep` (harness/checkpoint.py) and applies the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError

ARCHS: tuple[str, ...] = ("c3d", "r3d10", "r21d10", "r3d18", "r21d18")  # models.build_backbone
RATES = (1, 2, 4, 8)  # playback rates: frame steps of a sampled clip (data.sample_dilated_clip)
LAMBDA_SCHEDULES = ("exp", "log", "sigmoid", "plinear", "linear", "dpau", "cam")  # masks.py
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
INITS = ("pytorch", "torchvision", "zero-residual")  # models.build_backbone
DEFAULT_DATA = "data/synth"  # where `smp-lite data synth` writes and training reads by default

Check = tuple[Callable[[Any], bool], str]  # (is the value usable, what it must be)


def setting(
    default: Any,
    help: str,
    *,
    keep: bool = False,
    check: Check | None = None,
    choices: tuple[str, ...] = (),
    label: str = "",
    metavar: str = "",
) -> Any:
    """A config field declared once. `keep`: a resume must keep the value the run started
    with (it makes the run what it is, or lives on in the optimiser's or scheduler's saved
    state, where a new value would be silently overridden); a new one is refused. Otherwise a
    resume applies the new value. `choices`: the values it takes (checked, and shown by
    --help), `label` naming it in the refusal; `metavar`: what --help shows after the option."""
    meta = dict(help=help, keep=keep, check=check, choices=choices, label=label, metavar=metavar)
    return field(default=default, metadata=meta)


def positive(label: str) -> Check:
    return (lambda v: 0 < v < math.inf, f"{label} must be positive")  # NaN fails too


def at_least(n: int, label: str) -> Check:
    return (lambda v: v is None or v >= n, f"{label} must be {n} or more")


def is_device(name: str) -> bool:
    """auto, cpu, cuda or cuda:N as written; whether this machine has it is runtime.py's."""
    kind, _, index = name.partition(":")
    return name in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit())


DEVICE_CHECK: Check = (is_device, "device must be auto, cpu, cuda or cuda:N")


def check_settings(cfg: object) -> None:
    """Refuse the first field of `cfg` whose value fails its check or is not among its choices:
    ConfigError (exit code 2), before anything is read."""
    for f in fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            name = meta["label"] or f.name.replace("_", " ")
            raise ConfigError(
                f"unknown {name} {value!r}: choose one of {', '.join(meta['choices'])}"
            )
        if meta.get("check") and not meta["check"][0](value):
            sep = "," if "..." in str(f.type) else "x"
            raise ConfigError(f"{meta['check'][1]}, got {show(value, sep)}")


def check_run_settings(cfg: RunConfig) -> None:
    """`check_settings`, then what two settings of a run must agree on."""
    check_settings(cfg)
    if cfg.crop > min(cfg.resize):
        raise ConfigError(f"crop {cfg.crop} is larger than resize {show(cfg.resize)}")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("pass --resume or --overwrite, not both")


def show(value: object, sep: str = "x") -> str:
    """A value as the command line writes it: HxW for a size (A,B for a list: `sep` ","), on or
    off for a flag, auto for None."""
    if isinstance(value, tuple):
        return sep.join(map(str, value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return "auto" if value is None else str(value)


def kept_on_resume(*configs: type) -> tuple[str, ...]:
    """The fields of `configs` declared `keep`: those a resume refuses to change."""
    names = [f.name for c in configs for f in fields(c) if f.metadata.get("keep")]
    return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# What every run shares


@dataclass
class RunConfig:
    """The settings of every run: backbone, data, clips, hardware, folder. `as_json()` is what
    the run's config.json and checkpoints hold, with the run's `task` in it."""

    def as_json(self) -> dict:
        return {**asdict(self), "resize": list(self.resize), "task": self.task}

    arch: str = setting(
        "r3d18",
        "Backbone: c3d (C3D), r3d10 and r21d10 (R3D-10, R(2+1)D-10: one block a stage, the "
        "papers' nets), r3d18 and r21d18 (R3D-18, R(2+1)D-18: torchvision's).",
        keep=True,
        choices=ARCHS,
        label="architecture",
    )
    data: str = setting(
        DEFAULT_DATA,
        "Dataset as [kind:]PATH, kind synth, ucf101, hmdb51 or csv. The default generated "
        "dataset is created if absent.",
        metavar="[KIND:]PATH",
    )
    split: int = setting(
        1,
        "Official train/test split (1, 2 or 3).",
        keep=True,
        check=(lambda v: v in (1, 2, 3), "split must be 1, 2 or 3 (UCF101's and HMDB51's)"),
    )
    out: str = setting(
        "",
        "Run folder [default: runs/TASK-ARCH-DATASET, plus -lrLR and -seedN where they "
        "differ from the preset; evaluations: runs/KIND-ARCH-INIT].",
        metavar="PATH",
    )
    preset: str = setting(
        "paper",
        "quick (a few CPU minutes) or paper (method.md) [default: quick on generated data, "
        "paper on real data]. The options below override it.",
        choices=("paper", "quick"),
    )
    weight_init: str = setting(
        "pytorch",
        "How a new backbone's weights are drawn: pytorch (each layer's default, as in the "
        "original PRP/SMP code) or torchvision (Kaiming fan-out, as torchvision's video nets).",
        keep=True,
        choices=INITS,
        label="weight init",
    )
    clip_len: int = setting(
        16,
        "Frames per input clip.",
        keep=True,
        check=(lambda v: v >= 8 and v % 8 == 0, "clip length must be a multiple of 8"),
    )
    resize: tuple[int, int] = setting(
        (128, 171),
        "Decode frames at HxW before cropping, e.g. 128x171.",
        keep=True,
        check=(lambda v: min(v) > 0, "resize must be positive"),
    )
    crop: int = setting(
        112,
        "Square crop side, divisible by 16.",
        keep=True,
        check=(lambda v: v > 0 and v % 16 == 0, "crop must be positive and divisible by 16"),
    )
    workers: int | None = setting(
        None,  # None: runtime.loader_workers' default
        "Data loading processes (auto: none on a CPU, where the step already uses every core; "
        "on a GPU, all the rank's cores but one, at most 16).",
        check=at_least(0, "workers"),
    )
    device: str = setting(
        "auto",
        "auto (a GPU if there is one), cpu, cuda (under torchrun: the rank's own), cuda:N.",
        metavar="[auto|cpu|cuda|cuda:N]",
        check=DEVICE_CHECK,
    )
    precision: str = setting(
        "auto",
        "auto (bf16 on GPUs and CPUs with native bf16, else fp16 on a GPU, fp32 on a CPU), "
        "bf16, fp16 (GPUs only) or fp32.",
        choices=PRECISIONS,
    )
    channels_last: bool | None = setting(
        None, "channels_last_3d memory layout (auto: on with a GPU or bf16)."
    )
    compile: bool | None = setting(
        None,
        "Run the trained model through torch.compile. Where the default is auto: on with a "
        "GPU (compiling takes a minute or two there, much longer on a CPU); the probe's "
        "linear layer is not worth compiling.",
    )
    seed: int = setting(
        0,
        "Random seed: the same seed gives the same numbers on a CPU.",
        keep=True,
        check=(lambda v: 0 <= v < 2**32, f"seed must be in 0..{2**32 - 1}"),
    )
    resume: bool = setting(False, "Continue the run in OUT from last.pt, mid-epoch too.")
    overwrite: bool = setting(
        False, "Replace the run in OUT (kept until the new run saves its first last.pt)."
    )


@dataclass
class LoopConfig(RunConfig):
    """What a trained run adds, and the loop reads (engine.Run.cfg): the optimiser's
    settings, how long it trains and how often it saves. Defaults: PRP/SMP pretraining's; each
    task's presets set its own."""

    epochs: int = setting(300, "Epochs.", check=positive("epochs"))
    batch_size: int = setting(
        8, "Clips per batch (per process under torchrun).", keep=True,
        check=positive("batch size"),
    )  # fmt: skip
    lr: float = setting(0.01, "Learning rate.", keep=True, check=positive("learning rate"))
    momentum: float = setting(
        0.9, "SGD momentum.", keep=True, check=(lambda v: 0 <= v < 1, "momentum must be in [0, 1)")
    )
    weight_decay: float = setting(
        5e-4, "SGD weight decay.", keep=True,
        check=(lambda v: 0 <= v < math.inf, "weight decay must be 0 or more"),
    )  # fmt: skip
    precise_bn: int = setting(
        20,
        "Training batches that recompute BatchNorm statistics at each epoch end, before "
        "validation and saving (0 = keep the running averages).",
        check=at_least(0, "precise BN batches"),
    )
    limit_batches: int = setting(
        0, "Stop each epoch after N batches (0 = all; for smoke tests).",
        check=at_least(0, "limit batches"),
    )  # fmt: skip
    save_every: int = setting(
        100, "Also save last.pt every N steps within an epoch (0 = at epoch ends only).",
        check=at_least(0, "save every"),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Pretraining (train.py)

TASKS = ("smp", "prp", "supervised")
TASK_CROPS = {"smp": "random", "prp": "center", "supervised": "random"}  # the original codes'


@dataclass
class TrainConfig(LoopConfig):
    """One pretraining run. The defaults are the papers' PRP/SMP protocol (method.md 2-3);
    the other presets below are instances derived from it."""

    task: str = setting(
        "smp", "smp (motion perception), prp (playback rate) or supervised.", keep=True,
        choices=TASKS,
    )  # fmt: skip
    head_lr_scale: float = setting(
        10.0,  # the rate heads' final Linear ("fc8") learns this much faster
        "Learning-rate factor of the rate heads' last layer (10 in PRP).",
        keep=True,
        check=positive("head lr scale"),
    )
    recon_weight: float = setting(
        1.0, "Weight of the masked reconstruction loss (PRP/SMP: 1).", keep=True,
        check=(lambda v: 0 <= v < math.inf, "recon weight must be 0 or more"),
    )  # fmt: skip
    rate_weight: float = setting(
        0.1, "Weight of the c5 rate head's cross-entropy (PRP/SMP: 0.1).", keep=True,
        check=(lambda v: 0 <= v < math.inf, "rate weight must be 0 or more"),
    )  # fmt: skip
    mg_weight: float = setting(
        0.1, "Weight of the mean cross-entropy of SMP's c4, c3, c2 rate heads (SMP: 0.1).",
        keep=True, check=(lambda v: 0 <= v < math.inf, "mg weight must be 0 or more"),
    )  # fmt: skip
    schedule: str = setting(
        "plateau",  # plateau (PRP/SMP) or cosine with warm-up (supervised)
        "Learning-rate schedule: plateau (on the validation loss) or cosine (warm-up).",
        keep=True,
        choices=("plateau", "cosine"),
        label="lr schedule",
    )
    warmup_epochs: int = setting(
        0, "Linear warm-up epochs of the cosine schedule.", check=at_least(0, "warm-up epochs")
    )
    plateau_patience: int = setting(
        50,
        "Epochs without a lower validation loss before the plateau schedule divides the "
        "learning rate by 10.",
        keep=True,
        check=at_least(0, "plateau patience"),
    )
    train_crop: str = setting(
        "",  # empty: the task's original (TASK_CROPS)
        "Where training crops: random or center [default: the task's original: random for smp "
        "and supervised, center for prp]. Evaluation crops the centre.",
        keep=True,
        choices=("", "random", "center"),
        label="crop",
    )
    clips_per_video: int = setting(
        1,
        "Training clips drawn from each video per epoch, decoded in one pass (repeated "
        "sampling): each clip is drawn as if alone, but a batch holds fewer videos and an epoch "
        "is this many times as long (docs/benchmarks.md).",
        keep=True,
        check=at_least(1, "clips per video"),
    )
    val_fraction: float = setting(
        0.1, "Share of training groups held out to pick best.pt.", keep=True,
        check=(lambda v: 0 <= v < 1, "val fraction must be in [0, 1)"),
    )  # fmt: skip
    lam_schedule: str = setting(
        "exp",
        "SMP mask blend over the epochs, each taken at its place in a 300-epoch run: exp, log, "
        "sigmoid, plinear, linear, dpau (lambda=0) or cam (lambda=1).",
        keep=True,
        choices=LAMBDA_SCHEDULES,
        label="lambda schedule",
    )
    mg: bool = setting(True, "SMP multiple-granularity rate heads on c4, c3, c2.", keep=True)
    init_from: str = setting(
        "",
        "Initialise the backbone from this checkpoint: a smp-lite one of the same architecture, "
        "or one of the original PRP/SMP code (c3d, r3d10, r21d10).",
        keep=True,
        metavar="PATH",
    )


# Presets, (motion tasks, supervised) each: "paper" is method.md; "quick" keeps a pretraining run
# on the generated dataset to minutes on 2 CPU cores (48x48 crops, 10 epochs). Its supervised lr
# stays the motion tasks' 0.01, not the paper's 0.1: at batch 8, 0.05 left `r21d10` and `r3d18`
# at chance (an H200 sweep, in git history as docs/arch_sweep.md).
PAPER = TrainConfig()
QUICK = replace(PAPER, preset="quick", epochs=10, resize=(48, 64), crop=48)
PRESETS: dict[str, tuple[TrainConfig, TrainConfig]] = {
    "paper": (PAPER, replace(PAPER, batch_size=32, lr=0.1, schedule="cosine", warmup_epochs=5)),
    "quick": (QUICK, replace(QUICK, schedule="cosine", warmup_epochs=1)),
}

# ---------------------------------------------------------------------------------------------
# Evaluation (evaluate.py, probe.py)

TARGETS = ("speed", "action")
# the speed probe's baseline with no network: a clip's log mean squared frame difference
MOTION_ENERGY = "motion-energy"
INIT_HELP = (
    "The backbone to evaluate: random, a checkpoint (smp-lite of any task, or the original "
    "PRP/SMP code's c3d, r3d10, r21d10), or a run folder (its best.pt, else last.pt)"
)


@dataclass
class EvalConfig(RunConfig):
    """What every evaluation shares; defaults are method.md's (UCF101 clips)."""

    init: str = setting(
        "random",  # make_eval_config takes a run folder for its checkpoint
        INIT_HELP + " [default: the latest pretraining of --arch under runs/, the best.pt saved "
        "last].",
        keep=True,
        metavar="random|PATH",
    )
    test_views: int = setting(
        10, "Clips per test video; their logits or features are averaged.",
        check=at_least(1, "test views"),
    )  # fmt: skip


@dataclass
class ProbeConfig(EvalConfig, LoopConfig):
    """Linear probe on a frozen backbone; its protocol is the PROBE preset below."""

    init: str = setting(
        "random",
        INIT_HELP + ", or motion-energy (speed target only): no network, one number per clip, "
        "the log mean squared difference between its consecutive frames; a baseline (its scale "
        "is arbitrary: reproduce adds --standardize) [default: with --features, that run's; "
        "else the latest pretraining of --arch under runs/, the best.pt saved last].",
        keep=True,
        metavar="random|PATH",
    )
    target: str = setting(
        "speed", "What the linear layer learns: speed (the 4 playback rates) or action.",
        keep=True, choices=TARGETS, label="probe target",
    )  # fmt: skip
    train_views: int = setting(
        2, "Cached training clips per video (and per rate for speed).", keep=True,
        check=at_least(1, "train views"),
    )  # fmt: skip
    standardize: bool = setting(
        False,
        "Standardise each feature dimension with the training clips' mean and std before the "
        "linear layer (not in the seed's protocol: without it, SGD favours features of large "
        "scale).",
        keep=True,
    )
    refit_bn: int = setting(
        0,
        "Before caching features, re-estimate the frozen backbone's BatchNorm statistics over "
        "N batches of the probe's training clips (at most one pass; weights unchanged), then "
        "take eval-mode features as usual (0 = keep the init's statistics). Random weights keep "
        "BatchNorm's initial mean 0 and variance 1, under which their features barely vary.",
        keep=True,
        check=at_least(0, "refit-bn"),
    )
    features: str = setting(
        "",
        "Train on the features another probe run cached (its folder or features.pt) instead "
        "of computing them: to try --standardize, --lr or --epochs in seconds. Its clips must "
        "be this run's (same arch, init, data, clips, views, seed, refit-bn): those not given "
        "are taken from that run, those given are checked.",
        keep=True,
        metavar="PATH",
    )

    @property
    def task(self) -> str:
        return f"probe-{self.target}"


@dataclass
class FinetuneConfig(EvalConfig, LoopConfig):
    """Fine-tuning, random crops, tested with `test_views` clips per video; its protocol is the
    FINETUNE preset below."""

    task = "finetune"

    lr_step_epoch: int = setting(
        100, "Epoch at which the learning rate drops 10x.", keep=True,
        check=at_least(0, "lr step epoch"),
    )  # fmt: skip


@dataclass
class RetrieveConfig(EvalConfig):
    """Nearest-neighbour retrieval (VCOP): `test_views` clips per video, features averaged."""

    task = "retrieve"  # a class constant, not a setting: config.json names the evaluation


# Presets: "paper" is method.md: the seed's probe (SGD, batch 32, cosine from 0.0075 to 0, no
# weight decay, on cached features: no precise BatchNorm, nothing to compile) and PRP/VCOP's
# fine-tuning (lr 0.001, 160 epochs, x0.1 at epoch 100); "quick" at the quick preset's clips
PROBE = ProbeConfig(
    epochs=150, batch_size=32, lr=0.0075, weight_decay=0.0, save_every=0, precise_bn=0,
    compile=False,
)  # fmt: skip
FINETUNE = FinetuneConfig(epochs=160, lr=0.001)
QUICK_CLIPS = dict(preset="quick", resize=(48, 64), crop=48)  # as pretraining's quick preset
EVAL_PRESETS: dict[str, dict[str, EvalConfig]] = {
    "paper": {"probe": PROBE, "finetune": FINETUNE, "retrieve": RetrieveConfig()},
    "quick": {
        "probe": replace(PROBE, **QUICK_CLIPS, epochs=30),
        "finetune": replace(FINETUNE, **QUICK_CLIPS, epochs=10, lr_step_epoch=7, lr=0.01),
        "retrieve": RetrieveConfig(**QUICK_CLIPS),
    },
}
KEPT_ON_RESUME = kept_on_resume(TrainConfig, ProbeConfig, FinetuneConfig)

# ---------------------------------------------------------------------------------------------
# Benchmark (tools/bench.py)

# compute also timed with fused SGD, without or with torch.compile (the device's default:
# Runtime.compile)
BENCH_VARIANTS = ("fused", "eager", "compiled")


def among(allowed: tuple, label: str) -> Check:
    return (lambda v: bool(v) and set(v) <= set(allowed), f"{label} must be among {allowed}")


@dataclass
class BenchConfig:
    data: str = setting(
        DEFAULT_DATA,
        "Dataset as [kind:]PATH, kind synth, ucf101, hmdb51 or csv. The default generated "
        "dataset is created if absent.",
        metavar="[KIND:]PATH",
    )
    device: str = setting(
        "auto",
        "auto (a GPU if there is one), cpu, cuda, cuda:N.",
        metavar="[auto|cpu|cuda|cuda:N]",
        check=DEVICE_CHECK,
    )
    preset: str = setting(
        "",  # clip sizes of a pretraining preset; empty: paper on a GPU, quick on a CPU
        "Clip sizes of this pretraining preset [default: paper on a GPU, quick on a CPU].",
        choices=("", "paper", "quick"),
    )
    # all checked before anything is timed, not one by one as the bench reaches them
    archs: tuple[str, ...] = setting(
        ("r3d18",), "Backbones, comma-separated.", check=among(ARCHS, "archs")
    )
    tasks: tuple[str, ...] = setting(
        ("smp", "supervised"), "Tasks, comma-separated.", check=among(TASKS, "tasks")
    )
    clip_len: int = setting(0, "Frames per clip [default: the preset's].")  # 0: the preset's
    resize: tuple[int, int] | None = setting(None, "Decode frames at HxW [default: the preset's].")
    crop: int = setting(0, "Crop side [default: the preset's].")
    batch_size: int = setting(
        8, "Clips per batch (per process under torchrun).", check=positive("batch size")
    )
    original_batch: int = setting(
        8,  # the original code's: its loading and fp32 compute are timed at it
        "Batch of the original code's style.",
        check=positive("original batch"),
    )
    steps: int = setting(
        5,  # after 2 warm-up steps
        "Timed compute steps per setting.",
        check=positive("steps"),
    )
    rates: tuple[int, ...] = setting(
        RATES, "Playback rates of the loader, comma-separated.", check=among(RATES, "rates")
    )
    workers: tuple[int, ...] = setting(
        (0, 2),
        "Loader worker counts, comma-separated.",
        check=(lambda v: bool(v) and min(v) >= 0, "worker counts must be 0 or more"),
    )
    clips_per_video: tuple[int, ...] = setting(
        (1, 4),
        "Training clips per decoded video the loader is timed with (repeated sampling, "
        "pretrain --clips-per-video), comma-separated.",
        check=(lambda v: bool(v) and min(v) >= 1, "clips per video must be 1 or more"),
    )
    loader_batches: int = setting(
        6,
        "Timed loader batches per setting, after each worker's first batch.",
        check=positive("loader batches"),
    )
    step_batches: int = setting(
        20,
        "Batches of the long end-to-end epoch (0: skip).",
        check=at_least(0, "step batches"),
    )
    step_workers: int | None = setting(
        None,
        "Loader workers of the end-to-end run [default: pretrain's: none on a CPU, the cores "
        "but one on a GPU].",
        check=at_least(0, "step workers"),
    )
    variants: tuple[str, ...] = setting(
        (),
        "Also time the compute with: fused (SGD), eager (no torch.compile), compiled "
        "(torch.compile), comma-separated.",
        check=(lambda v: set(v) <= set(BENCH_VARIANTS), f"variants must be among {BENCH_VARIANTS}"),
    )
