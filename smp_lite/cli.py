"""The `smp-lite` command line: a thin layer over the functions the tutorials call too."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import __version__

app = typer.Typer(
    help="Self-supervised motion perception (SMP) and playback-rate perception (PRP) for video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Create and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DEFAULT_DATA = "data/synth"
state = {"debug": False}


def friendly_errors(fn):
    """User mistakes end in one line on stderr and exit code 1 (2 for bad options: ValueError,
    which ConfigError is), no traceback unless --debug; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .data import DataError
        from .errors import TrainError

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
    from .data import DataError

    report = check_dataset(root, split=split, workers=workers)
    typer.echo(format_report(report))
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"report: {json_file}")
    if not report["usable"]:
        train = report["videos"]["train"]
        raise DataError(f"{root}: none of the {train} training videos can be sampled")


@app.command()
@friendly_errors
def pretrain(
    ctx: typer.Context,
    arch: Annotated[
        str, typer.Option(help="Backbone: c3d, r3d10, r21d10, r3d18, r21d18.")
    ] = "r3d18",
    task: Annotated[
        str, typer.Option(help="smp (motion perception), prp (playback rate) or supervised.")
    ] = "smp",
    data: Annotated[
        str,
        typer.Option(
            help="Dataset as [kind:]PATH, kind synth, ucf101, hmdb51 or csv. The default generated "
            "dataset is created if absent."
        ),
    ] = DEFAULT_DATA,
    split: Annotated[int, typer.Option(help="Official train/test split (1, 2 or 3).")] = 1,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default runs/TASK-ARCH-DATASET).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="quick (a few CPU minutes; default on generated data) or paper "
            "(method.md settings; default on real data). Options below override it."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs [preset].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Clips per batch [preset].")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate [preset].")] = None,
    head_lr_scale: Annotated[
        float | None,
        typer.Option(help="Learning-rate factor of the rate heads' last layer [10, as in PRP]."),
    ] = None,
    clip_len: Annotated[int | None, typer.Option(help="Frames per input clip [preset].")] = None,
    crop: Annotated[
        int | None, typer.Option(help="Square crop side, divisible by 16 [preset].")
    ] = None,
    resize: Annotated[
        str | None,
        typer.Option(help="Decode frames at HxW before cropping, e.g. 128x171 [preset]."),
    ] = None,
    lam_schedule: Annotated[
        str | None,
        typer.Option(
            help="SMP mask blend: exp, linear, sigmoid, dpau (lambda=0), cam (lambda=1) [exp]."
        ),
    ] = None,
    mg: Annotated[
        bool | None, typer.Option(help="SMP multiple-granularity rate heads on c4, c3, c2 [on].")
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Share of training groups held out to pick best.pt [0.1].")
    ] = None,
    precise_bn: Annotated[
        int | None,
        typer.Option(
            help="Training batches that recompute BatchNorm statistics at each epoch end, "
            "before validation and saving (0 = keep the running averages) [20]."
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Data loading processes [2].")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N [auto].")] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="auto, bf16, fp16 or fp32 [auto: bf16 on GPUs and CPUs "
            "with native bf16, else fp16 on GPU, fp32 on CPU]."
        ),
    ] = None,
    channels_last: Annotated[
        bool | None, typer.Option(help="channels_last_3d memory layout [auto].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    limit_batches: Annotated[
        int, typer.Option(help="Stop each epoch after N batches (0 = all; for smoke tests).")
    ] = 0,
    save_every: Annotated[
        int | None,
        typer.Option(help="Also save last.pt every N steps within an epoch (0 = never) [100]."),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Initialise the backbone from this checkpoint: a smp-lite one of the same "
            "architecture, or one of the original PRP/SMP code (c3d, r3d10, r21d10)."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in OUT from last.pt, mid-epoch too.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run in OUT.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Pretrain a backbone by motion perception (SMP), playback rate (PRP) or action labels."""
    from .errors import RunInterrupted
    from .train import make_config, train

    cfg = make_config(
        task,
        preset,
        arch=arch,
        data=data,
        split=split,
        out=str(out) if out else None,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        head_lr_scale=head_lr_scale,
        clip_len=clip_len,
        crop=crop,
        resize=parse_size(resize) if resize else None,
        lam_schedule=lam_schedule,
        mg=mg,
        val_fraction=val_fraction,
        precise_bn=precise_bn,
        workers=workers,
        device=device,
        precision=precision,
        channels_last=channels_last,
        seed=seed,
        limit_batches=limit_batches,
        save_every=save_every,
        init_from=str(init_from) if init_from else None,
        resume=resume,
        overwrite=overwrite,
    )
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 speaks for all
    if data == DEFAULT_DATA and not Path(DEFAULT_DATA).exists():
        from .data import DataError
        from .synth import synthesize

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # ranks would write it all at once
            raise DataError(
                f"no dataset in {DEFAULT_DATA}: under torchrun, run `smp-lite data synth` first"
            )
        typer.echo(f"no dataset given: generating the default one in {DEFAULT_DATA}")
        synthesize(DEFAULT_DATA)
    try:
        result = train(cfg, progress=progress)
    except RunInterrupted as stopped:
        if is_main:
            command = resume_command(ctx, stopped.checkpoint.parent)
            typer.echo(f"{stopped}; to go on from there, run:\n  {command}", err=True)
        raise typer.Exit(130) from None
    if is_main:
        typer.echo(f"done: {result['out']} (best validation loss {result['best_val']:.4f})")


@app.command()
@friendly_errors
def report(
    runs: Annotated[
        list[Path], typer.Argument(metavar="RUN", help="Run folders (written by pretrain).")
    ],
    figure: Annotated[
        Path | None,
        typer.Option(help="Also save the per-epoch accuracy of every run to this PNG."),
    ] = None,
    table: Annotated[
        Path | None, typer.Option(help="Also write the markdown table to this file.")
    ] = None,
) -> None:
    """Print a markdown table of the runs' held-out accuracy; optionally plot their curves."""
    from .report import plot_curves, pretrain_table

    text = pretrain_table(runs)
    typer.echo(text)
    if table is not None:
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(text + "\n")
    if figure is not None:
        typer.echo(f"figure: {plot_curves(runs, figure)}")


def resume_command(ctx: typer.Context, out: Path) -> str:
    """This pretrain command with the options the user gave, ending in --resume --out OUT."""
    args = ["smp-lite", *(["--debug"] if state["debug"] else []), "pretrain"]
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
