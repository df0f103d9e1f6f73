"""The `smp-lite` command line: a thin layer over the functions the tutorials call too."""

from __future__ import annotations

import functools
import inspect
import os
import shlex
import sys
import typing
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated

import typer

# Module level: what --help shows (the settings, their defaults and choices, all in the
# torch-free config.py) and nothing else; what a run needs is imported in its command, so that
# --help does not wait for torch, torchmetrics and decord.
from . import __version__
from .config import (
    ARCHS,
    DEFAULT_DATA,
    EVAL_PRESETS,
    LAMBDA_SCHEDULES,
    PRESETS,
    TARGETS,
    TASK_CROPS,
    TASKS,
    BenchConfig,
    EvalConfig,
    FinetuneConfig,
    ProbeConfig,
    RetrieveConfig,
    TrainConfig,
)
from .errors import DataError, RunInterrupted, TrainError

app = typer.Typer(
    help="Self-supervised motion perception (SMP) and playback-rate perception (PRP) for video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # rich's help draws option panels; markdown, not rich markup, keeps the help texts'
    # brackets ("[kind:]PATH", "[default: ...]")
    rich_markup_mode="markdown",
)
data_app = typer.Typer(help="Create and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

state = {"debug": False}


def friendly_errors(fn):
    """User mistakes end in one line on stderr and exit code 1 (2 for bad options: ValueError,
    which ConfigError is), no traceback unless --debug; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DataError, TrainError, ValueError, OSError) as err:
            if state["debug"]:
                raise
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2 if isinstance(err, ValueError) else 1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"smp-lite {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option(help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool | None,
        typer.Option(
            "--version",
            callback=version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = None,
) -> None:
    state["debug"] = debug


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write the dataset to.")] = Path(DEFAULT_DATA),
    preset: Annotated[str, typer.Option(help="Dataset size: default or tiny.")] = "default",
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed writes the same videos.")
    ] = 0,
    workers: Annotated[
        int | None, typer.Option(help="Processes rendering videos (default: all cores, max 4).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Regenerate even if OUT holds a dataset.")
    ] = False,
    figure: Annotated[
        Path | None, typer.Option(help="Also save a grid of frames per class to this PNG.")
    ] = None,
) -> None:
    """Generate the motion-video dataset: real H.264 videos in the UCF101 layout."""
    from .synth import plot_class_grid, synthesize

    root = synthesize(out, preset=preset, seed=seed, workers=workers, overwrite=overwrite)
    typer.echo(f"dataset ready: {root}")
    if figure is not None:
        typer.echo(f"figure: {plot_class_grid(root, figure)}")


@data_app.command("check")
@friendly_errors
def data_check(
    root: Annotated[
        str,
        typer.Argument(
            help="Dataset as [kind:]PATH, kind synth, ucf101, hmdb51 or csv (PATH a .csv file)."
        ),
    ],
    split: Annotated[int, typer.Option(help="Official train/test split (1, 2 or 3).")] = 1,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the full report as JSON here.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes decoding videos (default: all cores).")
    ] = None,
) -> None:
    """Report classes, videos per split, and missing, unlisted, undecodable or short videos."""
    import json

    from .check import check_dataset, format_report

    report = check_dataset(root, split=split, workers=workers)
    typer.echo(format_report(report))
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"report: {json_file}")
    if not report["usable"]:
        train = report["videos"]["train"]
        raise DataError(f"{root}: none of the {train} training videos can be sampled")


# The help of each setting of a config (TrainConfig, the evaluation configs); its default comes
# from the config and its presets.
HELP = {
    "arch": f"Backbone: {', '.join(ARCHS)}.",
    "task": "smp (motion perception), prp (playback rate) or supervised.",
    "data": "Dataset as [kind:]PATH, kind synth, ucf101, hmdb51 or csv. The default generated "
    "dataset is created if absent.",
    "split": "Official train/test split (1, 2 or 3).",
    "out": "Run folder [default: runs/TASK-ARCH-DATASET, plus -lrLR and -seedN where they "
    "differ from the preset; evaluations: runs/KIND-ARCH-INIT].",
    "preset": "quick (a few CPU minutes) or paper (method.md) [default: quick on generated "
    "data, paper on real data]. The options below override it.",
    "epochs": "Epochs.",
    "batch_size": "Clips per batch (per process under torchrun).",
    "lr": "Learning rate.",
    "head_lr_scale": "Learning-rate factor of the rate heads' last layer (10 in PRP).",
    "momentum": "SGD momentum.",
    "weight_decay": "SGD weight decay.",
    "schedule": "Learning-rate schedule: plateau (on the validation loss) or cosine (warm-up).",
    "warmup_epochs": "Linear warm-up epochs of the cosine schedule.",
    "plateau_patience": "Epochs without a lower validation loss before the plateau schedule "
    "divides the learning rate by 10.",
    "clip_len": "Frames per input clip.",
    "resize": "Decode frames at HxW before cropping, e.g. 128x171.",
    "crop": "Square crop side, divisible by 16.",
    "train_crop": "Where training crops: random or center [default: the task's original: "
    "random for smp and supervised, center for prp]. Evaluation crops the centre.",
    "clips_per_video": "Training clips drawn from each video per epoch, decoded in one pass "
    "(repeated sampling): each clip is drawn as if alone, but a batch holds fewer videos and an "
    "epoch is this many times as long. With 4 a loader process made 2.2-2.3x the clips a second, "
    "but at batch 8 learning per step was slower (docs/benchmarks.md).",
    "val_fraction": "Share of training groups held out to pick best.pt.",
    "precise_bn": "Training batches that recompute BatchNorm statistics at each epoch end, "
    "before validation and saving (0 = keep the running averages).",
    "lam_schedule": "SMP mask blend over the epochs, each taken at its place in a 300-epoch run: "
    "exp, log, sigmoid, plinear, linear, dpau (lambda=0) or cam (lambda=1).",
    "mg": "SMP multiple-granularity rate heads on c4, c3, c2.",
    "workers": "Data loading processes (auto: none on a CPU, where the step already uses every "
    "core; on a GPU, all the rank's cores but one, at most 16).",
    "device": "auto (a GPU if there is one), cpu, cuda (under torchrun: the rank's own), cuda:N.",
    "precision": "auto (bf16 on GPUs and CPUs with native bf16, else fp16 on a GPU, fp32 on a "
    "CPU), bf16, fp16 (GPUs only) or fp32.",
    "channels_last": "channels_last_3d memory layout (auto: on with a GPU or bf16).",
    "compile": "Run the trained model through torch.compile (auto: on with a GPU; compiling "
    "takes a minute or two there, and much longer on a CPU).",
    "seed": "Random seed: the same seed gives the same numbers on a CPU.",
    "limit_batches": "Stop each epoch after N batches (0 = all; for smoke tests).",
    "save_every": "Also save last.pt every N steps within an epoch (0 = at epoch ends only).",
    "init_from": "Initialise the backbone from this checkpoint: a smp-lite one of the same "
    "architecture, or one of the original PRP/SMP code (c3d, r3d10, r21d10).",
    "resume": "Continue the run in OUT from last.pt, mid-epoch too.",
    "overwrite": "Replace the run in OUT (kept until the new run saves its first last.pt).",
    "init": "The backbone to evaluate: random, a checkpoint (smp-lite of any task, or the "
    "original PRP/SMP code's c3d, r3d10, r21d10), or a run folder (its best.pt, else last.pt) "
    "[default: the latest pretraining of --arch under runs/, the best.pt saved last].",
    "target": "What the linear layer learns: speed (the 4 playback rates) or action.",
    "train_views": "Cached training clips per video (and per rate for speed).",
    "standardize": "Standardise each feature dimension with the training clips' mean and std "
    "before the linear layer (not in the seed's protocol: without it, SGD favours features of "
    "large scale).",
    "refit_bn": "Before caching features, re-estimate the frozen backbone's BatchNorm statistics "
    "over N batches of the probe's training clips (at most one pass; weights unchanged), then "
    "take eval-mode features as usual (0 = keep the init's statistics). Random weights keep "
    "BatchNorm's initial mean 0 and variance 1, under which their features barely vary.",
    "features": "Train on the features another probe run cached (its folder or features.pt) "
    "instead of computing them: to try --standardize, --lr or --epochs in seconds. Its clips "
    "must be this run's (same arch, init, data, clips, views, seed, refit-bn): checked.",
    "test_views": "Clips per test video; their logits or features are averaged.",
    "lr_step_epoch": "Epoch at which the learning rate drops 10x.",
}
PROBE_HELP = HELP | {
    "init": "The backbone to evaluate: random, a checkpoint (smp-lite of any task, or the "
    "original PRP/SMP code's c3d, r3d10, r21d10), a run folder (its best.pt, else last.pt), or "
    "motion-energy (speed target only): no network, one number per clip, the log mean squared "
    "difference between its consecutive frames; a baseline (its scale is arbitrary: reproduce "
    "adds --standardize) [default: with --features, that run's; else the latest pretraining "
    "of --arch under runs/, the best.pt saved last].",
    "precise_bn": "Fine-tuning's: must stay 0 here, the linear layer has no BatchNorm (--refit-bn "
    "re-estimates the frozen backbone's).",
}


# The --help panels, in order, and the settings each shows (of the commands that have them);
# the commands' own options (--progress) go to Run.
PANELS = {
    "Task": "arch task target init init_from preset".split(),
    "Data": "data split val_fraction".split(),
    "Clips": "clip_len resize crop train_crop clips_per_video train_views test_views".split(),
    "Optimisation": "epochs batch_size lr head_lr_scale momentum weight_decay schedule "
    "warmup_epochs plateau_patience lr_step_epoch precise_bn".split(),
    "SMP": "lam_schedule mg".split(),
    "Probe": "features standardize refit_bn".split(),
    "Hardware": "workers device precision channels_last compile".split(),
    "Run": "out seed resume overwrite save_every limit_batches".split(),
}
# The settings that take one of a fixed set of values: --help shows them as the metavar. The
# values are checked by the configs' validation (train.validate, evaluate.validate_eval), which
# spells the schedules and precisions out itself; tests/test_cli.py holds the two in step.
CHOICES = {
    "arch": ARCHS,
    "task": TASKS,
    "target": TARGETS,
    "preset": tuple(PRESETS),
    "train_crop": tuple(dict.fromkeys(TASK_CROPS.values())),
    "schedule": ("plateau", "cosine"),
    "lam_schedule": LAMBDA_SCHEDULES,
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "device": ("auto", "cpu", "cuda", "cuda:N"),
}
# The other text settings: files, folders and datasets
METAVARS = {
    "data": "[KIND:]PATH",
    "out": "PATH",
    "init": "random|PATH",
    "init_from": "PATH",
    "features": "PATH",
}


def shown_default(name: str, presets: dict[str, tuple], help: str, sep: str = "x") -> str:
    """A setting's default as --help shows it: one value, or the value of each preset (and of
    supervised runs, a preset's second config, where it differs); empty where `help` says it.
    `sep` joins the items of a tuple: "x" for a size, "," for a list."""
    values = {
        preset: tuple(getattr(c, name) for c in configs) for preset, configs in presets.items()
    }
    first = next(iter(values.values()))[0]
    if "default:" in help or first == "":
        return ""
    if len({v for each in values.values() for v in each}) == 1:
        return f" [default: {show_value(first, sep)}]"
    shown = [
        f"{preset} {show_value(v[0], sep)}"
        + ("" if len(v) == 1 or v[1] == v[0] else f" (supervised {show_value(v[1], sep)})")
        for preset, v in values.items()
    ]
    return f" [default: {', '.join(shown)}]"


def show_value(value: object, sep: str = "x") -> str:
    if isinstance(value, tuple):
        return sep.join(map(str, value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return "auto" if value is None else str(value)


def option_type(hint: object) -> type:
    """The command-line type of a config field: text for a size (HxW) or a list (A,B), X for
    `X | None`."""
    hint = without_none(hint)
    return str if typing.get_origin(hint) is tuple else hint


def without_none(hint: object) -> object:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(hint) else hint


def is_list(hint: object) -> bool:
    """A variable-length tuple setting, `tuple[X, ...]`, given on the command line as A,B,C."""
    return Ellipsis in typing.get_args(without_none(hint))


def parse_option(value: object, hint: object) -> object:
    """A list setting from "A,B,C", a size from "HxW"; any other as typer parsed it."""
    if typing.get_origin(without_none(hint)) is not tuple:
        return value
    if not is_list(hint):
        return parse_size(value)
    kind = typing.get_args(without_none(hint))[0]
    try:
        return tuple(kind(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"{value!r} is not a comma-separated list of {kind.__name__}") from None


def with_config_options(
    command: Callable,
    config: type,
    presets: dict[str, tuple],
    help: dict[str, str],
    panels: dict[str, list[str]] | None = None,
) -> Callable:
    """Give `command` (which takes **settings) one option per field of the dataclass `config`,
    defaulting to None so that the config decides, with `help` and the presets' defaults, in
    the --help panels of `panels` (in their order; none: one list)."""
    hints = typing.get_type_hints(config)
    own_hints = typing.get_type_hints(command, include_extras=True)
    own = [
        p.replace(annotation=own_hints.get(p.name, p.annotation))
        for p in inspect.signature(command).parameters.values()
        if p.kind is not p.VAR_KEYWORD
    ]
    params = [p for p in own if p.kind is not p.KEYWORD_ONLY]
    panel_of = {name: panel for panel, names in (panels or {}).items() for name in names}
    order = list(panel_of)  # typer shows the panels in the order of their first option
    for f in sorted(fields(config), key=lambda f: order.index(f.name) if f.name in order else -1):
        kind, sep = option_type(hints[f.name]), "," if is_list(hints[f.name]) else "x"
        option = typer.Option(
            help=help[f.name] + shown_default(f.name, presets, help[f.name], sep),
            show_default=False,
            metavar=None if kind is bool else metavar(f.name, hints[f.name]),
            rich_help_panel=panel_of.get(f.name),
        )
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kind | None, option],
            )
        )
    params += [p for p in own if p.kind is p.KEYWORD_ONLY]  # the command's own options last
    command.__signature__ = inspect.Signature(params)
    return command


def metavar(name: str, hint: object) -> str:
    """What --help shows after a setting's option: its choices, [KIND:]PATH and the like, HxW
    for a size, A,B,... for a list, else its type (INT, FLOAT, TEXT)."""
    if name in CHOICES:
        return f"[{'|'.join(CHOICES[name])}]"
    if name in METAVARS:
        return METAVARS[name]
    if typing.get_origin(without_none(hint)) is tuple:
        return "A,B,..." if is_list(hint) else "HxW"
    kind = option_type(hint)
    return "TEXT" if kind is str else kind.__name__.upper()


# --progress of the runs' commands: bars only, a log without them still gets the numbers
ShowProgress = Annotated[
    bool,
    typer.Option(
        help="Show progress bars (the epoch rows print either way).", rich_help_panel="Run"
    ),
]


def pretrain(
    ctx: typer.Context,
    *,
    progress: ShowProgress = True,
    **settings,
) -> None:
    """Pretrain a backbone by motion perception (SMP), playback rate (PRP) or action labels."""
    from .train import make_config, train

    if settings["resize"] is not None:
        settings["resize"] = parse_size(settings["resize"])
    result = interruptible(ctx, train, make_config(**settings), progress)
    if is_main_process():
        typer.echo(f"done: {result['out']} (best validation loss {result['best_val']:.4f})")


def probe(
    ctx: typer.Context,
    *,
    progress: ShowProgress = True,
    **settings,
) -> None:
    """Linear probe on a frozen backbone: the playback rate (speed; the seed's Table 1) or the
    action. Features are computed once and cached in the run folder."""
    from . import probe as linear_probe

    evaluation(ctx, "probe", linear_probe.probe, settings, progress)


def finetune(
    ctx: typer.Context,
    *,
    progress: ShowProgress = True,
    **settings,
) -> None:
    """Fine-tune a backbone on action labels; test with 10 clips per test video."""
    from . import evaluate

    evaluation(ctx, "finetune", evaluate.finetune, settings, progress)


def retrieve(
    ctx: typer.Context,
    *,
    progress: ShowProgress = True,
    **settings,
) -> None:
    """Video retrieval: test videos query the training videos; top-1/5/10/20/50 hit rates."""
    from . import evaluate

    evaluation(ctx, "retrieve", evaluate.retrieve, settings, progress)


def evaluation(
    ctx: typer.Context, kind: str, run: Callable, settings: dict, progress: bool
) -> None:
    from . import evaluate

    if settings["resize"] is not None:
        settings["resize"] = parse_size(settings["resize"])
    cfg = evaluate.make_eval_config(kind, **settings)  # the other settings checked first
    chosen = {}
    if settings["init"] is None:
        cfg = replace(cfg, init=default_init(cfg))
        chosen["init"] = cfg.init  # a resume must evaluate it, whatever is pretrained meanwhile
    elif cfg.init != str(settings["init"]) and is_main_process():
        typer.echo(f"init: {cfg.init}")  # a run folder given: which of its checkpoints
    results = interruptible(ctx, run, cfg, progress, chosen)
    if is_main_process():
        typer.echo(f"done: {evaluate.eval_out(cfg)} ({evaluate.summary(results)})")


def default_init(cfg: EvalConfig) -> str:
    """The backbone an evaluation given no --init evaluates: a probe on another probe's
    features, that probe's (the features must be of it); else the latest pretraining of the
    arch under runs/ (the newcomer's path: pretrain, then probe), said in one line. With none,
    an error: an evaluation of random weights should be asked for, not stumbled into."""
    from . import evaluate

    if getattr(cfg, "features", ""):
        source = Path(cfg.features)
        return evaluate.run_config(source if source.is_dir() else source.parent).get(
            "init", "random"
        )  # features_file checks the rest
    latest = evaluate.latest_pretraining(cfg.arch)
    if latest is None:
        raise TrainError(
            f"no {cfg.arch} pretraining in runs/: run smp-lite pretrain --arch {cfg.arch} "
            "first, or pass --init random for random weights (or --init PATH, a checkpoint or "
            "run folder)"
        )
    if is_main_process():
        note = f"the latest {cfg.arch} pretraining; --init random for random weights"
        typer.echo(f"init: {latest} ({note})")
    return str(latest)


def interruptible(
    ctx: typer.Context, run: Callable, cfg: object, progress: bool, chosen: dict | None = None
) -> dict:
    """`run(cfg)`; on Ctrl-C or SIGTERM, print how to go on (with the options in `chosen`,
    picked for the user) and exit 130."""
    try:
        return run(cfg, progress=progress)
    except RunInterrupted as stopped:
        if is_main_process():
            command = resume_command(ctx, stopped.checkpoint.parent, chosen or {})
            typer.echo(f"{stopped}; to go on from there, run:\n  {command}", err=True)
        raise typer.Exit(130) from None


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 speaks for all


app.command()(friendly_errors(with_config_options(pretrain, TrainConfig, PRESETS, HELP, PANELS)))
for command, config, helps in (
    (probe, ProbeConfig, PROBE_HELP),
    (finetune, FinetuneConfig, HELP),
    (retrieve, RetrieveConfig, HELP),
):
    kind = command.__name__
    presets = {name: (configs[kind],) for name, configs in EVAL_PRESETS.items()}
    app.command()(friendly_errors(with_config_options(command, config, presets, helps, PANELS)))


@app.command()
@friendly_errors
def report(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN",
            help="Run folders: of pretrain, probe, finetune or retrieve, in any mix.",
        ),
    ],
    figure: Annotated[
        Path | None,
        typer.Option(help="Also save the per-epoch accuracy of every run with epochs to this PNG."),
    ] = None,
    table: Annotated[
        Path | None, typer.Option(help="Also write the markdown tables to this file.")
    ] = None,
) -> None:
    """Print markdown tables of the runs: pretrainings' held-out accuracy, evaluations' results
    and last epoch; a note for what a run cannot show; optionally plot their curves."""
    from .report import plot_curves, report_text

    text, notes = report_text(runs)
    typer.echo(text)
    for note in notes:
        typer.echo(f"note: {note}")
    if table is not None:
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(text + "\n")
    if figure is not None:
        typer.echo(f"figure: {plot_curves(runs, figure)}")


@app.command("export")
@friendly_errors
def export_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="RUN", help="A run folder (its best.pt, else last.pt) or a checkpoint file."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="File to write [default: backbone.pt beside the checkpoint]."),
    ] = None,
) -> None:
    """Write the backbone alone (no heads, decoder or optimizer): a small file for --init."""
    from .checkpoint import export_backbone

    path = export_backbone(source, out)
    typer.echo(f"backbone: {path} ({path.stat().st_size / 2**20:.0f} MiB)")


@app.command("reproduce")
@friendly_errors
def reproduce_command(
    profile: Annotated[
        str,
        typer.Option(
            help="tiny: every step in about 2 minutes (a smoke test); synth: the generated "
            "dataset, about 2.5 hours on 2 CPU cores (make reproduce); paper: method.md's "
            "protocol on --data, for GPUs."
        ),
    ] = "synth",
    data: Annotated[
        str | None,
        typer.Option(help="[kind:]PATH of the dataset; default: the profile's generated one."),
    ] = None,
    runs: Annotated[
        Path | None, typer.Option(help="Folder of the steps' runs; default runs/reproduce-PROFILE.")
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option(help="Folder of the tables and pictures; default results/PROFILE."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    report_only: Annotated[
        bool,
        typer.Option(help="Run no step: write the tables and pictures of the finished ones."),
    ] = False,
) -> None:
    """Pretrain (supervised, PRP, SMP) and evaluate (speed and action probes, fine-tuning,
    retrieval) three backbones, then write Table 1, Table 2, retrieval and their pictures. A
    rerun reuses the finished steps and resumes an interrupted one."""
    from .reproduce import reproduce

    try:
        summary = reproduce(profile, data, runs, results, progress, report_only)
    except RunInterrupted as stopped:
        typer.echo(f"{stopped}; run the same command again to go on from there", err=True)
        raise typer.Exit(130) from None
    where = results or Path("results") / profile
    typer.echo(f"done in {summary['seconds'] / 60:.0f} min of steps: {where}/table1.md, ...")


# The help of each BenchConfig setting; defaults come from BenchConfig itself.
BENCH_HELP = {
    **{k: HELP[k] for k in ("data", "device", "batch_size")},
    "preset": "Clip sizes of this pretraining preset [default: paper on a GPU, quick on a CPU].",
    "archs": "Backbones, comma-separated.",
    "tasks": "Tasks, comma-separated.",
    "clip_len": "Frames per clip [default: the preset's].",
    "resize": "Decode frames at HxW [default: the preset's].",
    "crop": "Crop side [default: the preset's].",
    "original_batch": "Batch of the original code's style.",
    "steps": "Timed compute steps per setting.",
    "rates": "Playback rates of the loader, comma-separated.",
    "workers": "Loader worker counts, comma-separated.",
    "clips_per_video": "Training clips per decoded video the loader is timed with (repeated "
    "sampling, pretrain --clips-per-video), comma-separated.",
    "loader_batches": "Timed loader batches per setting, after each worker's first batch.",
    "step_batches": "Batches of the long end-to-end epoch (0: skip).",
    "step_workers": "Loader workers of the end-to-end run [default: pretrain's: none on a CPU, "
    "the cores but one on a GPU].",
    "variants": "Also time the compute with: fused (SGD), eager (no torch.compile), compiled "
    "(torch.compile), comma-separated.",
}


def bench_command(
    *,
    write: Annotated[
        Path | None,
        typer.Option(
            help="Also put the tables into this markdown file, between its bench "
            "markers (e.g. docs/benchmarks.md)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Print each number as it is measured.")] = True,
    **settings,
) -> None:
    """Time each part of a pretraining step alone: matmul peak, compute (with FLOPs and the
    share of the peak), the loader per rate and worker count, the original code's loading
    style on the same files, and train() end to end."""
    from .bench import bench, bench_config, format_report, write_section

    hints = typing.get_type_hints(BenchConfig)
    parsed = {k: parse_option(v, hints[k]) for k, v in settings.items() if v is not None}
    options = [f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if v is not None]
    text = format_report(
        bench(bench_config(**parsed), progress), " ".join(["smp-lite bench", *options])
    )
    typer.echo(text)
    if write is not None:
        write_section(write, text)
        typer.echo(f"written to {write}")


app.command("bench")(
    friendly_errors(
        with_config_options(bench_command, BenchConfig, {"": (BenchConfig(),)}, BENCH_HELP)
    )
)


def resume_command(ctx: typer.Context, out: Path, chosen: dict[str, str] | None = None) -> str:
    """This command with the options the user gave and those `chosen` for them, ending in
    --resume --out OUT."""
    args = ["smp-lite", *(["--debug"] if state["debug"] else []), ctx.info_name]
    for name, value in (chosen or {}).items():
        args += [f"--{name.replace('_', '-')}", value]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name in ("out", "resume", "overwrite") or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if isinstance(value, bool):  # typer's --flag/--no-flag pairs
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return shlex.join([*args, "--resume", "--out", str(out)])


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not HxW, e.g. 128x171") from None
    return h, w


if __name__ == "__main__":
    sys.exit(app())
