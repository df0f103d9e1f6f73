"""Every run's settings, torch-free so that `smp-lite --help` starts in a fraction of a second:
the dataclass configs of pretraining (train.py), evaluation (evaluate.py, probe.py) and the
benchmark (bench.py), their presets, and the names a setting chooses from. Each default is
written here once; the command line reads them (and the help texts in cli.py) from here."""

from __future__ import annotations

from dataclasses import dataclass, replace

ARCHS: tuple[str, ...] = ("c3d", "r3d10", "r21d10", "r3d18", "r21d18")  # models.build_backbone
RATES = (1, 2, 4, 8)  # playback rates: frame steps of a sampled clip (data.sample_dilated_clip)
LAMBDA_SCHEDULES = ("exp", "log", "sigmoid", "plinear", "linear", "dpau", "cam")  # masks.py
DEFAULT_DATA = "data/synth"  # where `smp-lite data synth` writes and training reads by default

# ---------------------------------------------------------------------------------------------
# Pretraining (train.py)

TASKS = ("smp", "prp", "supervised")
TASK_CROPS = {"smp": "random", "prp": "center", "supervised": "random"}  # the original codes'


@dataclass
class TrainConfig:
    """One pretraining run. The defaults are the papers' PRP/SMP protocol (method.md 2-3);
    the other presets below are instances derived from it."""

    arch: str = "r3d18"
    task: str = "smp"
    data: str = DEFAULT_DATA
    split: int = 1
    out: str = ""  # empty: runs/<task>-<arch>-<dataset folder>
    preset: str = "paper"
    epochs: int = 300
    batch_size: int = 8
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
    train_crop: str = ""  # random or center; empty: the task's original (TASK_CROPS)
    clips_per_video: int = 1  # >1: training clips per decoded video (repeated sampling)
    val_fraction: float = 0.1  # of the training groups, held out to pick best.pt
    precise_bn: int = 20  # training batches that recompute BatchNorm statistics each epoch end
    lam_schedule: str = "exp"
    mg: bool = True  # multiple-granularity rate heads (SMP)
    workers: int | None = None  # loader processes; None: runtime.loader_workers' default
    device: str = "auto"
    precision: str = "auto"  # auto, bf16, fp16, fp32
    channels_last: bool | None = None  # None: on where it pays (GPU, CPU with bf16)
    compile: bool | None = None  # torch.compile the training model; None: on a GPU
    seed: int = 0
    limit_batches: int = 0  # >0: stop each epoch after this many batches (smoke runs)
    save_every: int = 100  # steps between mid-epoch saves of last.pt (0: at epoch ends only)
    init_from: str = ""  # checkpoint to initialise the backbone from (smp-lite or original code)
    resume: bool = False
    overwrite: bool = False


# Presets, (motion tasks, supervised) each: "paper" is method.md; "quick" keeps a pretraining run
# on the generated dataset to minutes on 2 CPU cores (48x48 crops, 10 epochs). Its supervised lr
# is the motion tasks' 0.01: at batch 8, 0.05 left `r21d10` and `r3d18` at chance
# (docs/arch_sweep.md).
PAPER = TrainConfig()
QUICK = replace(PAPER, preset="quick", epochs=10, resize=(48, 64), crop=48)
PRESETS: dict[str, tuple[TrainConfig, TrainConfig]] = {
    "paper": (PAPER, replace(PAPER, batch_size=32, lr=0.1, schedule="cosine", warmup_epochs=5)),
    "quick": (QUICK, replace(QUICK, lr=0.01, schedule="cosine", warmup_epochs=1)),
}

# ---------------------------------------------------------------------------------------------
# Evaluation (evaluate.py, probe.py)

TARGETS = ("speed", "action")
# the speed probe's baseline with no network: a clip's log mean squared frame difference
MOTION_ENERGY = "motion-energy"


@dataclass
class EvalConfig:
    """What every evaluation shares; defaults are method.md's (UCF101 clips)."""

    arch: str = "r3d18"
    # "random", a checkpoint (smp-lite, or original PRP/SMP weights; make_eval_config takes a
    # run folder for its checkpoint), or for the speed probe MOTION_ENERGY (no network: `arch`
    # is unused)
    init: str = "random"
    data: str = DEFAULT_DATA
    split: int = 1
    out: str = ""  # empty: runs/<kind>-<arch>-<init name>
    preset: str = "paper"
    clip_len: int = 16
    resize: tuple[int, int] = (128, 171)
    crop: int = 112
    test_views: int = 10  # clips per test video, logits or features averaged
    workers: int | None = None  # loader processes; None: runtime.loader_workers' default
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool | None = None  # torch.compile the trained model; None: on a GPU
    seed: int = 0
    resume: bool = False
    overwrite: bool = False


@dataclass
class ProbeConfig(EvalConfig):
    """Linear probe on a frozen backbone (the seed: SGD, batch 32, cosine from 0.0075 to 0)."""

    target: str = "speed"
    train_views: int = 2  # cached training clips per video (and per rate for speed)
    standardize: bool = False  # features less the training mean, over its std, per dimension
    # >0: before caching, the frozen backbone's BatchNorm statistics re-estimated over this
    # many batches of the probe's training clips (at most one pass); 0: the init's kept
    refit_bn: int = 0
    features: str = ""  # another probe run's features.pt to train on (the same clips: checked)
    epochs: int = 150
    batch_size: int = 32
    lr: float = 0.0075
    momentum: float = 0.9
    weight_decay: float = 0.0
    limit_batches: int = 0
    save_every: int = 0
    precise_bn: int = 0  # the linear layer has no BatchNorm (refit_bn is the backbone's)
    compile: bool | None = False  # one Linear layer on cached features: nothing to gain


@dataclass
class FinetuneConfig(EvalConfig):
    """Fine-tuning (PRP/VCOP): SGD lr 0.001, momentum 0.9, wd 5e-4, batch 8, 160 epochs, x0.1
    at epoch 100, random crops; tested with `test_views` clips per video."""

    epochs: int = 160
    lr_step_epoch: int = 100
    batch_size: int = 8
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    limit_batches: int = 0
    save_every: int = 100
    precise_bn: int = 20


@dataclass
class RetrieveConfig(EvalConfig):
    """Nearest-neighbour retrieval (VCOP): `test_views` clips per video, features averaged."""


QUICK_CLIPS = dict(preset="quick", resize=(48, 64), crop=48)  # as pretraining's quick preset
EVAL_PRESETS: dict[str, dict[str, EvalConfig]] = {
    "paper": {"probe": ProbeConfig(), "finetune": FinetuneConfig(), "retrieve": RetrieveConfig()},
    "quick": {
        "probe": ProbeConfig(**QUICK_CLIPS, epochs=30),
        "finetune": FinetuneConfig(**QUICK_CLIPS, epochs=10, lr_step_epoch=7, lr=0.01),
        "retrieve": RetrieveConfig(**QUICK_CLIPS),
    },
}

# ---------------------------------------------------------------------------------------------
# Benchmark (bench.py)


@dataclass
class BenchConfig:
    data: str = DEFAULT_DATA
    device: str = "auto"
    preset: str = ""  # clip sizes of a pretraining preset; empty: paper on a GPU, quick on a CPU
    archs: tuple[str, ...] = ("r3d18",)
    tasks: tuple[str, ...] = ("smp", "supervised")
    clip_len: int = 0  # 0: the preset's (so for resize and crop)
    resize: tuple[int, int] | None = None
    crop: int = 0
    batch_size: int = 8
    original_batch: int = 8  # the original code's: its loading and fp32 compute are timed at it
    steps: int = 5  # timed compute steps per setting, after 2 warm-up steps
    rates: tuple[int, ...] = RATES
    workers: tuple[int, ...] = (0, 2)
    clips_per_video: tuple[int, ...] = (1, 4)  # the loader timed with each (repeated sampling)
    loader_batches: int = 6  # timed loader batches per setting, after the workers' first round
    step_batches: int = 20  # batches of the long end-to-end epoch (0: skip it)
    step_workers: int | None = None  # loader workers of the end-to-end run; None: training's
    variants: tuple[str, ...] = ()  # compute also timed with: fused (SGD), eager, compiled
