"""`smp-lite reproduce` (`make reproduce`): every run behind the seed's Table 1 and the PRP/SMP
papers' downstream tables, for one backbone per family, then the tables and pictures.

For each backbone of the profile: supervised, PRP and SMP pretraining (`train.train`); then the
speed probe on motion energy (no network, so one step for all backbones: Table 1's baseline
row), and from each initialisation (random weights, and the best.pt of each pretraining) the
speed probe (Table 1), the same probe on its features standardised, and again after its
BatchNorm statistics are re-estimated on the training clips (`probe.py`), the action probe and
fine-tuning (Table 2) and retrieval (`evaluate`). The speed probes come first after
pretraining, so Table 1 is complete earliest; fine-tuning, the slowest step, comes last.

Every step is a run folder under RUNS (runs/reproduce-<profile>): steps.json there records each
finished step with the settings it ran with and the time it took. A rerun reuses the recorded
steps, resumes an interrupted one from its last.pt and runs the rest; before each step it says
what it is doing and how long that and the whole rest should take, estimated from the steps
done so far. Then `report.write_reproduce_report` writes RESULTS (results/<profile>).

Backbones: the seed's Table 1 has C3D, "3D-R18" and R(2+1)D. The PRP/SMP code builds its R3D
and R(2+1)D with one basic block per stage, which smp-lite names `r3d10` and `r21d10` (SMP's
README calls that R3D "3D-R18", method.md section 1), so those and `c3d` are reproduced.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..config import ARCHS, DEFAULT_DATA, MOTION_ENERGY
from ..errors import ConfigError, DataError
from ..evaluate import finetune, make_eval_config, retrieve
from ..harness.checkpoint import BEST, FEATURES, LAST, RESULTS
from ..harness.folders import read_metrics, write_text
from ..index import load_index
from ..probe import probe
from ..train import make_config, train
from . import synth
from .report import ENERGY, main_head, write_reproduce_report

ARCHS_REPRODUCED = ("c3d", "r3d10", "r21d10")  # C3D, "3D-R18" and R(2+1)D of the seed
INITS = ("random", "supervised", "prp", "smp")  # Table 1's rows, in order
# in the order they run; probe-speed-energy (ENERGY): one step, whatever the backbones
EVALUATIONS = (
    ENERGY,
    "probe-speed",
    "probe-speed-std",
    "probe-speed-bn",
    "probe-action",
    "retrieve",
    "finetune",
)
REFIT_BN = 20  # batches of 32 training clips: BatchNorm statistics over 640 clips
# The speed probe's variants: its settings, then these, then the profile's entry for the kind.
# std: Table 1's second table, the same cached features standardised (plain SGD favours
# features of large scale); bn: its third, BatchNorm statistics re-estimated; energy: its
# baseline row, standardised since it is one number of arbitrary scale
SPEED_VARIANTS = {
    ENERGY: {"init": MOTION_ENERGY, "standardize": True},
    "probe-speed-std": {"standardize": True},
    "probe-speed-bn": {"refit_bn": REFIT_BN},
}
STEPS_FILE = "steps.json"


@dataclass
class Profile:
    """What `reproduce` runs: the data, the backbones and the settings of every step (overrides
    of the pretraining and evaluation presets, which are method.md's protocol by default)."""

    data: str  # "" : must be given (--data)
    synth: str = ""  # a generated dataset: its synth preset, generated at `data` when missing
    archs: tuple[str, ...] = ARCHS_REPRODUCED
    pretrain: dict = field(default_factory=dict)
    supervised: dict = field(default_factory=dict)  # the supervised pretraining's own overrides
    # per EVALUATIONS entry; the speed probe's variants take probe-speed's, then their own
    evaluations: dict[str, dict] = field(default_factory=dict)
    seconds_per_unit: float = 0.2  # first guess of one SMP training clip's time (see step_units)
    # the backbones the BatchNorm-refit probe runs on (it re-extracts every feature); empty: all
    refit_bn_archs: tuple[str, ...] = ()
    keep_checkpoints: bool = True  # False: deleted once the tables are written (a rerun redoes)


SMALL_CLIPS = dict(clip_len=8, resize=(32, 40), crop=32, workers=0, precision="fp32")
PROFILES: dict[str, Profile] = {
    # make test: every step on 48 generated videos in seconds; checks the pipeline, not science
    "tiny": Profile(
        data="data/synth-tiny",
        synth="tiny",
        pretrain=dict(preset="quick", epochs=1, batch_size=4, limit_batches=2, **SMALL_CLIPS),
        evaluations={
            "probe-speed": dict(preset="quick", epochs=2, train_views=1, **SMALL_CLIPS),
            "probe-action": dict(
                preset="quick", epochs=2, train_views=1, test_views=1, **SMALL_CLIPS
            ),  # fmt: skip
            "retrieve": dict(preset="quick", test_views=1, **SMALL_CLIPS),
            "finetune": dict(
                preset="quick", epochs=1, limit_batches=2, test_views=1, **SMALL_CLIPS
            ),  # fmt: skip
        },
        seconds_per_unit=0.05,
        keep_checkpoints=False,  # weights of seconds of training: of no use, and GBs of disk
    ),
    # make reproduce: the default generated dataset, 48x48 clips, under 2 h on 2 CPU cores
    "synth": Profile(
        data=DEFAULT_DATA,
        synth="default",
        # no torch.compile on a GPU either: at 48x48 a run there waits on its loader (300-600
        # clips/s, docs/reproduce.md), so compiling would only add its own time
        pretrain=dict(preset="quick", epochs=6, compile=False),
        # action labels need more steps than the rate: 16 epochs take R3D to ~70% held out
        supervised=dict(epochs=16),
        evaluations={
            "probe-speed": dict(preset="quick", train_views=1),
            # one number a clip: trained until it no longer moves (300 epochs at lr 0.1 give
            # what 2000 give), so the baseline is not held back by the probe's budget
            ENERGY: dict(epochs=300, lr=0.1),
            "probe-action": dict(preset="quick", train_views=1, test_views=3),
            "retrieve": dict(preset="quick", test_views=3),
            "finetune": dict(
                preset="quick", epochs=4, lr_step_epoch=3, test_views=3, compile=False
            ),  # fmt: skip
        },
        # C3D answers which probe is closest to the seed's Random row; ~9 min saved
        refit_bn_archs=("c3d",),
    ),
    # make reproduce DATA=ucf101:/path: method.md's protocol in full, for GPUs
    "paper": Profile(data="", pretrain=dict(preset="paper"), seconds_per_unit=0.01),
}


@dataclass
class Step:
    """One run of the pipeline; `name` is its run folder's name under RUNS."""

    name: str  # "pretrain-smp-c3d", "probe-speed-c3d-prp", ...
    kind: str  # "pretrain" or one of EVALUATIONS
    arch: str  # "" for motion energy: no network
    init: str  # the pretraining task, or for evaluations the initialisation (INITS)
    settings: dict  # the keyword arguments of make_config / make_eval_config


def reproduce(
    profile: str = "synth",
    data: str | None = None,
    runs: str | Path | None = None,
    results: str | Path | None = None,
    progress: bool = True,
    report_only: bool = False,
    archs: tuple[str, ...] | None = None,
) -> dict:
    """Run (or go on with) every step of `profile`, then write the tables and pictures;
    returns summary.json's contents. `report_only`: run nothing, write what the finished
    steps give (the rest shows as not run yet). `archs`: the backbones, one column each, in
    place of the profile's."""
    prof, data = pick_profile(profile, data, archs)
    runs = Path(runs or Path("runs") / f"reproduce-{profile}")
    results = Path(results or Path("results") / profile)
    prepare_data(prof, data, progress)
    index = load_index(data)
    steps = plan_steps(prof, data, runs)
    units = {s.name: step_units(s, len(index.train), len(index.test)) for s in steps}
    records = read_records(runs)
    for i, step in enumerate([] if report_only else steps, start=1):
        if is_done(step, records, runs):
            print(f"[{i}/{len(steps)}] {step.name}: done before, reused")
            continue
        pace = seconds_per_unit(records, step.arch, prof.seconds_per_unit)
        left = sum(units[s.name] for s in steps[i - 1 :] if not is_done(s, records, runs))
        print(
            f"[{i}/{len(steps)}] {step.name}: {describe(step)}, about "
            f"{duration(units[step.name] * pace)} ({duration(left * pace)} left in all)",
            flush=True,
        )
        t0 = time.perf_counter()
        resumed = run_step(step, runs / step.name, progress)
        records[step.name] = {
            "arch": step.arch,
            "settings": jsonable(step.settings),
            "seconds": round(time.perf_counter() - t0, 1),  # of this last start only
            "units": units[step.name],
            "resumed": resumed,
        }
        write_text(runs / STEPS_FILE, json.dumps(records, indent=1) + "\n")
    summary = collect(profile, prof, data, steps, records, runs)
    write_reproduce_report(summary, runs, results)
    if not prof.keep_checkpoints and not report_only:
        freed = delete_checkpoints(runs)
        print(f"deleted the {profile} profile's checkpoints under {runs} ({freed / 2**20:.0f} MiB)")
    return summary


def delete_checkpoints(runs: Path) -> int:
    """Delete the weights and cached features of every step under `runs` (their results,
    configs and metrics stay); returns the bytes freed."""
    freed = 0
    for name in (BEST, LAST, FEATURES):
        for path in runs.glob(f"*/{name}"):
            freed += path.stat().st_size
            path.unlink()
    return freed


def pick_profile(
    name: str, data: str | None, archs: tuple[str, ...] | None = None
) -> tuple[Profile, str]:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    unknown = [a for a in archs or () if a not in ARCHS]
    if unknown:
        raise ConfigError(f"unknown architecture {unknown[0]!r}: choose among {', '.join(ARCHS)}")
    prof = replace(PROFILES[name], archs=archs) if archs else PROFILES[name]
    data = data or prof.data
    if not data:
        raise ConfigError(f"profile {name!r} needs --data, e.g. --data ucf101:/path/to/UCF101")
    return prof, data


def prepare_data(prof: Profile, data: str, progress: bool) -> None:
    """A generated dataset is made on first use; one made with other settings is refused, since
    it would give other numbers under the same names."""
    if not prof.synth:
        return
    meta_file = Path(data, "meta.json")
    if not meta_file.is_file():
        print(f"generating the {prof.synth!r} dataset in {data}")
        synth.synthesize(data, prof.synth, progress=progress, overwrite=Path(data).exists())
        return
    meta = json.loads(meta_file.read_text())
    if meta["preset"] != prof.synth or not synth.generated_with(meta, synth.PRESETS[prof.synth]):
        raise DataError(
            f"{data} was generated with other settings than this profile's {prof.synth!r} "
            f"dataset; regenerate it: smp-lite data synth --out {data} --preset {prof.synth} "
            "--overwrite"
        )


def plan_steps(prof: Profile, data: str, runs: Path) -> list[Step]:
    """Pretraining first, then motion energy (cheap), then each evaluation from every
    initialisation, speed probes first."""
    steps = [
        Step(f"pretrain-{task}-{arch}", "pretrain", arch, task, pretrain_settings(prof, task, data))
        for arch in prof.archs
        for task in INITS[1:]
    ]
    steps.append(Step(ENERGY, ENERGY, "", MOTION_ENERGY, eval_settings(prof, ENERGY, data)))
    for kind in EVALUATIONS[1:]:
        for arch in evaluated_archs(prof, kind):
            for init in INITS:
                weights = runs / f"pretrain-{init}-{arch}" / BEST
                settings = eval_settings(prof, kind, data)
                settings["init"] = "random" if init == "random" else str(weights)
                if kind == "probe-speed-std":  # on the speed probe's features
                    settings["features"] = str(runs / f"probe-speed-{arch}-{init}" / FEATURES)
                steps.append(Step(f"{kind}-{arch}-{init}", kind, arch, init, settings))
    return steps


def evaluated_archs(prof: Profile, kind: str) -> tuple[str, ...]:
    if kind == "probe-speed-bn" and prof.refit_bn_archs:
        return tuple(a for a in prof.refit_bn_archs if a in prof.archs)
    return prof.archs


def pretrain_settings(prof: Profile, task: str, data: str) -> dict:
    return {**prof.pretrain, **(prof.supervised if task == "supervised" else {}), "data": data}


def eval_settings(prof: Profile, kind: str, data: str) -> dict:
    """The settings of an evaluation of `kind`: the profile's; a variant of the speed probe's
    start from the speed probe's."""
    if kind not in SPEED_VARIANTS:
        return {**prof.evaluations.get(kind, {}), "data": data}
    own = prof.evaluations.get(kind, {})
    return {**prof.evaluations.get("probe-speed", {}), **SPEED_VARIANTS[kind], **own, "data": data}


def run_step(step: Step, out: Path, progress: bool) -> bool:
    """The step's run: resumed from its last.pt if it has one made after the step's inputs,
    else (re)started afresh (a probe would otherwise reuse features of older weights); returns
    whether it was resumed."""
    resume = (out / LAST).is_file() and newer_than_inputs(step, out / LAST)
    settings = {
        **step.settings,
        "out": str(out),
        "resume": resume,
        "overwrite": out.exists() and not resume,
    }
    if step.arch:  # motion energy has no network: the preset's (unused) architecture
        settings["arch"] = step.arch
    if step.kind == "pretrain":
        train(make_config(step.init, **settings), progress)
        return resume
    kind, target = evaluation(step.kind)
    if target:
        settings["target"] = target
    run = {"probe": probe, "finetune": finetune, "retrieve": retrieve}[kind]
    run(make_eval_config(kind, **settings), progress)
    return resume


def evaluation(kind: str) -> tuple[str, str]:
    """The evaluation and its target: ("probe", "speed") for probe-speed and its variants."""
    name, _, target = kind.partition("-")
    return name, target.split("-")[0]


def describe(step: Step) -> str:
    if step.kind == "pretrain":
        return f"{step.init} pretraining of {step.arch}"
    what = {
        ENERGY: "speed probe on motion energy (no network)",
        "probe-speed": "speed probe (Table 1)",
        "probe-speed-std": "speed probe on standardised features",
        "probe-speed-bn": "speed probe with BatchNorm statistics re-estimated",
        "probe-action": "action probe",
        "retrieve": "retrieval",
        "finetune": "fine-tuning",
    }[step.kind]
    return f"{what} of {step.arch} from {step.init} weights" if step.arch else what


# ---------------------------------------------------------------------------------------------
# Steps done, and the time the rest takes


def read_records(runs: Path) -> dict:
    path = runs / STEPS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise DataError(f"{path} is not readable JSON: delete it to run every step again") from None


def is_done(step: Step, records: dict, runs: Path) -> bool:
    """Recorded with the settings it has now, its output is there, and newer than the checkpoint
    or features it read (a pretraining run again since makes its evaluations stale)."""
    record = records.get(step.name)
    output = runs / step.name / (BEST if step.kind == "pretrain" else RESULTS)
    if record is None or record["settings"] != jsonable(step.settings) or not output.is_file():
        return False
    return newer_than_inputs(step, output)


def newer_than_inputs(step: Step, path: Path) -> bool:
    """Whether `path` was written after the checkpoint or features the step reads."""
    inputs = [Path(step.settings[k]) for k in ("init", "features") if k in step.settings]
    made = path.stat().st_mtime
    return all(made >= source.stat().st_mtime for source in inputs if source.is_file())


def jsonable(value: object) -> object:
    return json.loads(json.dumps(value))


# Cost of one clip, in SMP training clips, measured on a 2-core CPU at 16x48x48
# (docs/benchmarks.md): supervised and fine-tuning steps have no decoder, the frozen backbone's
# features need no backward pass.
MOTION_CLIP, ACTION_CLIP, FEATURE_CLIP = 1.0, 0.45, 0.15
DECODE_CLIP = 0.1  # a speed probe's clip decoded alone (the loader's 87/s, SMP's step 8.7/s)
LINEAR_CLIP = 0.0005  # a cached feature through the probe's linear layer, per epoch


def step_units(step: Step, n_train: int, n_test: int) -> float:
    """The step's work in SMP training clips: what the time estimate scales."""
    if step.kind == "pretrain":
        cfg = make_config(step.init, **step.settings, arch=step.arch)
        cost = ACTION_CLIP if step.init == "supervised" else MOTION_CLIP
        clips = n_train * (1 - cfg.val_fraction)
        if cfg.limit_batches:
            clips = min(clips, cfg.limit_batches * cfg.batch_size)
        per_epoch = clips * cost + n_train * cfg.val_fraction * 4 * FEATURE_CLIP * 2
        return round(cfg.epochs * per_epoch, 1)
    kind, target = evaluation(step.kind)
    settings = {**step.settings, "init": "random"}
    cfg = make_eval_config(kind, **settings, **({"target": target} if target else {}))
    if step.settings.get("features"):  # the linear layer alone, on cached features
        return round(cfg.epochs * n_train * cfg.train_views * 4 * LINEAR_CLIP, 1)
    if kind == "probe":
        rates = 4 if target == "speed" else 1
        test_views = 4 if target == "speed" else cfg.test_views
        clips = n_train * cfg.train_views * rates + n_test * test_views
        if step.settings.get("init") == MOTION_ENERGY:  # no network
            return round(clips * DECODE_CLIP, 1)
        refit = min(cfg.refit_bn * cfg.batch_size, n_train * cfg.train_views * rates)
        return round((clips + refit) * FEATURE_CLIP, 1)
    if kind == "retrieve":
        return round((n_train + n_test) * cfg.test_views * FEATURE_CLIP, 1)
    clips = n_train if not cfg.limit_batches else min(n_train, cfg.limit_batches * cfg.batch_size)
    return round(cfg.epochs * clips * ACTION_CLIP + n_test * cfg.test_views * FEATURE_CLIP, 1)


def seconds_per_unit(records: dict, arch: str, guess: float) -> float:
    """Seconds per unit of the steps of `arch` that ran from start to end, else of all such
    steps, else the profile's guess (a resumed step's time covers only part of its units)."""
    whole = [r for r in records.values() if not r.get("resumed")]
    for chosen in ([r for r in whole if r["arch"] == arch], whole):
        units = sum(r["units"] for r in chosen)
        if units > 0:
            return sum(r["seconds"] for r in chosen) / units
    return guess


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


# ---------------------------------------------------------------------------------------------
# Summary


def collect(
    name: str, prof: Profile, data: str, steps: list[Step], records: dict, runs: Path
) -> dict:
    """Every number of the tables, the time each step took and the device: summary.json."""
    summary: dict = {
        "profile": name,
        "data": data,
        "archs": list(prof.archs),
        "refit_bn_archs": list(evaluated_archs(prof, "probe-speed-bn")),
        "device": device_name(),
        "seconds": round(sum(records[s.name]["seconds"] for s in steps if s.name in records), 1),
        "steps": {s.name: records[s.name]["seconds"] for s in steps if s.name in records},
        "pretrain": {},
        **{kind: {} for kind in EVALUATIONS},
    }
    if prof.synth:  # how well the rate can be told at all on this data (Table 1's last rows)
        summary["rate_ceilings"] = synth.rate_ceilings(synth.PRESETS[prof.synth])
    for step in [s for s in steps if is_done(s, records, runs)]:
        out = runs / step.name
        if step.kind == "pretrain":
            summary["pretrain"].setdefault(step.arch, {})[step.init] = pretrain_numbers(out)
        elif (out / RESULTS).is_file():
            numbers = json.loads((out / RESULTS).read_text())
            if step.kind == ENERGY:  # no network: one result for every backbone
                summary[ENERGY] = numbers
            else:
                summary[step.kind].setdefault(step.arch, {})[step.init] = numbers
    return summary


def pretrain_numbers(out: Path) -> dict:
    """The held-out accuracy of the run's main head at its best.pt and its last epoch."""
    rows = read_metrics(out) if (out / "metrics.jsonl").is_file() else []
    if not rows or "val_loss" not in rows[-1]:
        return {}
    head = main_head(rows)
    best = min(rows, key=lambda r: r["val_loss"])
    return {
        "head": head,
        "epochs": rows[-1]["epoch"],
        "best_epoch": best["epoch"],
        "best_val_acc": best[f"val_acc_{head}"],
        "last_val_acc": rows[-1][f"val_acc_{head}"],
        "last_train_acc": rows[-1][f"train_acc_{head}"],
    }


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    return f"CPU, {os.cpu_count()} cores"
