"""The `smp-lite` command line: a thin layer over the functions the tutorials call too."""

from __future__ import annotations

import functools
import inspect
import os
import shlex
import sys
import typing
from collections.abc import Callable
from dataclasses import Field, fields, replace
from pathlib import Path
from typing import Annotated

import typer

# Module level: what --help shows (the settings, their defaults and choices, all in the
# torch-free config.py) and nothing else; what a run needs is imported in its command, so that
# --help does not wait for torch, torchmetrics and decord.
from . import __version__
from .config import (
    DEFAULT_DATA,
    EVAL_PRESETS,
    PRESETS,
    BenchConfig,
    EvalConfig,
    FinetuneConfig,
    ProbeConfig,
    RetrieveConfig,
    TrainConfig,
    check_settings,
    show,
)
from .errors import DataError, MissingPath, RunInterrupted, TrainError

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
    preset: Annotated[
        str,
        typer.Option(
            help="default; tiny (for tests); in-place, plain, muted: the data until 2026-12-08 "
            "(actors in place) and that with backgrounds at 0 or 35% contrast (docs/reproduce.md)."
        ),
    ] = "default",
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
    from .tools.synth import plot_class_grid, synthesize

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

    from .tools.check import check_dataset, format_report

    report = check_dataset(root, split=split, workers=workers)
    typer.echo(format_report(report))
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"report: {json_file}")
    if not report["usable"]:
        train = report["videos"]["train"]
        raise DataError(f"{root}: none of the {train} training videos can be sampled")


# The --help panels, in order, and the settings each shows (of the commands that have them);
# the commands' own options (--progress) go to Run.
PANELS = {
    "Task": "arch weight_init task target init init_from preset".split(),
    "Data": "data split val_fraction".split(),
    "Clips": "clip_len resize crop train_crop clips_per_video train_views test_views".split(),
    "Optimisation": "epochs batch_size lr head_lr_scale momentum weight_decay schedule "
    "warmup_epochs plateau_patience lr_step_epoch precise_bn".split(),
    "Losses": "recon_weight rate_weight mg_weight lam_schedule mg".split(),
    "Probe": "features standardize refit_bn".split(),
    "Hardware": "workers device precision channels_last compile".split(),
    "Run": "out seed resume overwrite save_every limit_batches".split(),
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
        return f" [default: {show(first, sep)}]"
    shown = [
        f"{preset} {show(v[0], sep)}"
        + ("" if len(v) == 1 or v[1] == v[0] else f" (supervised {show(v[1], sep)})")
        for preset, v in values.items()
    ]
    return f" [default: {', '.join(shown)}]"


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
    """A list setting from "A,B,C", a size from "HxW"; any other (or None: not given) as typer
    parsed it."""
    if value is None or typing.get_origin(without_none(hint)) is not tuple:
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
    panels: dict[str, list[str]] | None = None,
) -> Callable:
    """Give `command` (which takes **settings) one option per field of the dataclass `config`,
    defaulting to None so that the config decides, with the field's help (config.setting) and
    the presets' defaults, in the --help panels of `panels` (in their order; none: one list)."""
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
        help = f.metadata["help"]
        option = typer.Option(
            help=help + shown_default(f.name, presets, help, sep),
            show_default=False,
            metavar=None if kind is bool else metavar(f, hints[f.name]),
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

    @functools.wraps(command)
    def checked(*args, **settings):
        settings = {k: parse_option(v, hints[k]) if k in hints else v for k, v in settings.items()}
        refuse_bad_settings(config, settings)  # in well under a second: nothing heavy loaded
        return command(*args, **settings)

    checked.__signature__ = inspect.Signature(params)
    return checked


def refuse_bad_settings(config: type, settings: dict) -> None:
    """ConfigError for the first setting given whose value fails its own check or choices, as
    config.check_settings would after the heavy imports."""
    names = {f.name for f in fields(config)}  # not the command's own options
    for name, value in settings.items():
        if name in names and value is not None:
            check_settings(replace(config(), **{name: value}))


def metavar(setting: Field, hint: object) -> str:
    """What --help shows after a setting's option: its choices, [KIND:]PATH and the like, HxW
    for a size, A,B,... for a list, else its type (INT, FLOAT, TEXT)."""
    choices = [c for c in setting.metadata["choices"] if c]  # "": a default the help explains
    if choices:
        return f"[{'|'.join(choices)}]"
    if setting.metadata["metavar"]:
        return setting.metadata["metavar"]
    if typing.get_origin(without_none(hint)) is tuple:
        return "A,B,..." if is_list(hint) else "HxW"
    kind = option_type(hint)
    return "TEXT" if kind is str else kind.__name__.upper()


# --progress of the runs' commands: bars only, a log without them still gets the numbers
ShowProgress = Annotated[
    bool,
    typer.Option(
        help="Show progress bars; without them each long phase prints one line when it ends "
        "(the epoch rows print either way).",
        rich_help_panel="Run",
    ),
]


def pretrain_command(
    ctx: typer.Context,
    *,
    progress: ShowProgress = True,
    **settings,
) -> None:
    """Pretrain a backbone by motion perception (SMP), playback rate (PRP) or action labels."""
    from .train import make_config, train

    result = interruptible(ctx, train, make_config(**settings), progress)
    if is_main_process():
        typer.echo(f"done: {result['out']} (best validation loss {result['best_val']:.4f})")


def probe_command(
    ctx: typer.Context,
    *,
    progress: ShowProgress = True,
    **settings,
) -> None:
    """Linear probe on a frozen backbone: the playback rate (speed; the seed's Table 1) or the
    action. Features are computed once and cached in the run folder."""
    from .probe import probe

    evaluation(ctx, "probe", probe, settings, progress)


def finetune_command(
    ctx: typer.Context,
    *,
    progress: ShowProgress = True,
    **settings,
) -> None:
    """Fine-tune a backbone on action labels; test with 10 clips per test video."""
    from . import evaluate

    evaluation(ctx, "finetune", evaluate.finetune, settings, progress)


def retrieve_command(
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

    if settings.get("features"):
        settings |= settings_of_features(ctx, settings["features"])
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


def settings_of_features(ctx: typer.Context, features: str) -> dict:
    """The settings that decide a probe's clips (its init too) which the command line leaves
    unset, as the `--features` run used them: its clips must be this probe's, so they need not
    be typed again. probe.features_file checks those given; nothing here for a path without a
    readable config.json, which it refuses."""
    from . import evaluate
    from .probe import FEATURE_FIELDS

    source = Path(features)
    theirs = evaluate.run_config(source if source.is_dir() else source.parent)
    unset = [
        name
        for name in ("preset", "test_views", *FEATURE_FIELDS)
        if name in theirs and ctx.get_parameter_source(name).name == "DEFAULT"
    ]
    return {name: tuple(v) if isinstance(v := theirs[name], list) else v for name in unset}


def default_init(cfg: EvalConfig) -> str:
    """The backbone an evaluation given no --init evaluates: the latest pretraining of the
    arch under runs/ (the newcomer's path: pretrain, then probe), said in one line. With none,
    an error: an evaluation of random weights should be asked for, not stumbled into."""
    from . import evaluate

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
        return run_making_the_default_data(run, cfg, progress)
    except RunInterrupted as stopped:
        if is_main_process():
            command = resume_command(ctx, stopped.checkpoint.parent, chosen or {})
            typer.echo(f"{stopped}; to go on from there, run:\n  {command}", err=True)
        raise typer.Exit(130) from None


def run_making_the_default_data(run: Callable, cfg: object, progress: bool) -> dict:
    """`run(cfg)`; when it finds the default dataset missing (after its own refusals, before
    it writes anything), the dataset is generated and the run started again."""
    from .tools.synth import ensure_default_dataset

    try:
        return run(cfg, progress=progress)
    except MissingPath as missing:
        if missing.path != Path(cfg.data) or not ensure_default_dataset(cfg.data):
            raise
        return run(cfg, progress=progress)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 speaks for all


app.command("pretrain")(
    friendly_errors(with_config_options(pretrain_command, TrainConfig, PRESETS, PANELS))
)
for kind, command, config in (
    ("probe", probe_command, ProbeConfig),
    ("finetune", finetune_command, FinetuneConfig),
    ("retrieve", retrieve_command, RetrieveConfig),
):
    presets = {name: (configs[kind],) for name, configs in EVAL_PRESETS.items()}
    app.command(kind)(friendly_errors(with_config_options(command, config, presets, PANELS)))


@app.command("report")
@friendly_errors
def report_command(
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
    from .tools.report import plot_curves, report_text

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
    from .harness.checkpoint import export_backbone

    path = export_backbone(source, out)
    typer.echo(f"backbone: {path} ({path.stat().st_size / 2**20:.0f} MiB)")


@app.command("reproduce")
@friendly_errors
def reproduce_command(
    profile: Annotated[
        str,
        typer.Option(
            help="tiny: every step in minutes (a smoke test); synth: the generated dataset, "
            "about 2 hours on 2 CPU cores (make reproduce); paper: method.md's protocol on "
            "--data, for GPUs."
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
    archs: Annotated[
        str | None,
        typer.Option(
            metavar="A,B,...",
            help="Backbones, comma-separated, one column each [default: the profile's, "
            "c3d,r3d10,r21d10]; e.g. add r3d18 to compare `pretrain --arch r3d18` runs with "
            "the tables (the steps done are reused).",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    report_only: Annotated[
        bool,
        typer.Option(help="Run no step: write the tables and pictures of the finished ones."),
    ] = False,
) -> None:
    """Pretrain (supervised, PRP, SMP) and evaluate (speed and action probes, fine-tuning,
    retrieval) each backbone, then write Table 1, Table 2, retrieval and their pictures. A
    rerun reuses the finished steps and resumes an interrupted one."""
    from .tools.reproduce import reproduce

    chosen = tuple(archs.split(",")) if archs else None
    try:
        summary = reproduce(profile, data, runs, results, progress, report_only, chosen)
    except RunInterrupted as stopped:
        typer.echo(f"{stopped}; run the same command again to go on from there", err=True)
        raise typer.Exit(130) from None
    where = results or Path("results") / profile
    typer.echo(f"done in {summary['seconds'] / 60:.0f} min of steps: {where}/table1.md, ...")


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
    from .tools.bench import bench, bench_config, format_report, write_section

    hints = typing.get_type_hints(BenchConfig)
    given = {k: v for k, v in settings.items() if v is not None}
    options = [
        f"--{k.replace('_', '-')} {show(v, ',' if is_list(hints[k]) else 'x')}"
        for k, v in given.items()
    ]
    text = format_report(
        bench(bench_config(**given), progress), " ".join(["smp-lite bench", *options])
    )
    typer.echo(text)
    if write is not None:
        write_section(write, text)
        typer.echo(f"written to {write}")


app.command("bench")(
    friendly_errors(with_config_options(bench_command, BenchConfig, {"": (BenchConfig(),)}))
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
