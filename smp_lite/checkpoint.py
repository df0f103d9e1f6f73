"""Checkpoints and run folders: what a run saves and restores, in one smp-lite checkpoint format
for every task; atomic saves; loading a backbone from a smp-lite checkpoint or from one of the
original PRP/SMP code; the checks that keep one run per folder.

A smp-lite checkpoint is a dict with "format" = CHECKPOINT_FORMAT, the architecture, task and
configuration of its run, the state of each of its objects (model, optimizer, ...), and where
the run stands (`Progress`): `save_run` writes one, `load_run` puts a run back where it was.
Every load uses `torch.load(weights_only=True)`: a checkpoint file never runs code.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from . import __version__
from .errors import TrainError

CHECKPOINT_FORMAT = "smp-lite/1"
CONFIG, METRICS, BEST, LAST = "config.json", "metrics.jsonl", "best.pt", "last.pt"
RESULTS, FEATURES = "results.json", "features.pt"  # an evaluation's numbers, a probe's cache
RUN_FILES = (CONFIG, METRICS, BEST, LAST, RESULTS, FEATURES)  # what a run writes in its folder
LOCK = "run.lock"  # while a run holds its folder
PREVIOUS = ".previous"  # the run --overwrite replaces, until the new run saves last.pt
MOVING = ".previous-moving"  # files on their way into or out of .previous
ORIGINAL_ARCHS = ("c3d", "r3d10", "r21d10")  # the backbones the original PRP/SMP code has


@dataclass
class Progress:
    """Where a run stands: `epoch` epochs done, then `batches_done` batches of the next."""

    epoch: int = 0
    batches_done: int = 0
    step: int = 0
    best_val: float = math.inf
    skipped: set[str] = field(default_factory=set)  # videos the loaders could not read
    metric_state: dict = field(default_factory=dict)  # the unfinished epoch's training metrics


def save_run(
    paths: list[Path],
    config: dict,
    classes: tuple[str, ...],
    objects: dict[str, Any],
    at: Progress,
    row: dict,
) -> None:
    """Save everything a resumed run needs to go on as this one would: the state of each object
    (model, optimizer, scheduler, scaler), the progress, the random generators, and `row`, the
    metrics of the last finished epoch. The state is written to paths[0]; the other paths, in
    order, become hard links to that file (one write, and the disk space of one)."""
    cuda_rng = {"rng_cuda": torch.cuda.get_rng_state()} if torch.cuda.is_initialized() else {}
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "arch": config["arch"],
        "task": config["task"],
        "config": config,
        "classes": list(classes),
        **{name: obj.state_dict() for name, obj in objects.items()},
        "epoch": at.epoch,
        "batches_done": at.batches_done,
        "step": at.step,
        "best_val": at.best_val,
        "skipped_videos": sorted(at.skipped),
        "metric_state": at.metric_state,
        "metrics": row,
        "rng_cpu": torch.get_rng_state(),
        **cuda_rng,
    }
    save_checkpoint(paths[0], state)
    for path in paths[1:]:
        link_atomic(paths[0], path)
    if any(path.name == LAST for path in paths):  # this run can resume: the run it replaced goes
        shutil.rmtree(paths[0].parent / PREVIOUS, ignore_errors=True)


def load_run(
    path: Path, config: dict, classes: tuple[str, ...], objects: dict[str, Any]
) -> Progress:
    """Put each object back in the state `path` saved, after checking that the run configured
    as `config` continues it; returns where the saved run stood."""
    state = load_checkpoint(path)
    check_compatible(state, config, classes, path)
    for name, obj in objects.items():
        obj.load_state_dict(state[name])
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng_cuda"])
    return Progress(
        epoch=state["epoch"],
        batches_done=state["batches_done"],
        step=state["step"],
        best_val=state["best_val"],
        skipped=set(state["skipped_videos"]),
        metric_state=state.get("metric_state", {}),
    )


def save_checkpoint(path: Path, state: dict) -> None:
    """Save `state` atomically (write_atomic); `load_checkpoint` reads it back."""
    write_atomic(path, functools.partial(torch.save, state), tensor_bytes(state))


def write_atomic(path: Path, write: Callable[[BinaryIO], object], size: int) -> None:
    """Write `path` with `write` into NAME.tmp, fsync and rename it: a kill leaves the previous
    file whole. A failed write removes NAME.tmp; on a full disk (or quota) the error names the
    folder, the `size` the file needs and the space free."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if out_of_space(err) or 0 <= free_bytes(path.parent) < size:
            raise TrainError(no_space_message(path, size)) from None
        raise


def link_atomic(source: Path, path: Path) -> None:
    """Make `path` a second name of `source`'s file, replacing any old `path` in one rename. A
    later write_atomic of `source` makes a new file and leaves `path` as it is. Where the file
    system has no hard links, `path` becomes a copy."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        write_atomic(path, functools.partial(copy_file, source), source.stat().st_size)
        return
    os.replace(tmp, path)


def copy_file(source: Path, f: BinaryIO) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f)


def out_of_space(err: BaseException | None) -> bool:
    """Whether a failed write met a full disk or quota. torch.save reports it as a RuntimeError
    of its own, with the OSError as its context."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(err) for text in ("No space left on device", "Disk quota exceeded")):
            return True
        err = err.__cause__ or err.__context__
    return False


def tensor_bytes(obj: object) -> int:
    """The bytes of the tensors in a (nested) state: about the size of its checkpoint."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        obj = list(obj.values())
    return sum(tensor_bytes(v) for v in obj) if isinstance(obj, (list, tuple)) else 0


def free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return -1  # unknown: not taken for a full disk


def no_space_message(path: Path, needed: int) -> str:
    free = free_bytes(path.parent)
    then = "go on with --resume" if (path.parent / LAST).is_file() else "start again"
    return (
        f"no space left in {path.parent} to save {path.name}: it needs about {mib(needed)}, "
        f"{mib(max(free, 0))} free (the files saved before are intact); free some space, "
        f"then {then}"
    )


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def read_torch_file(path: str | Path) -> object:
    path = Path(path)
    if path.is_dir():
        raise TrainError(f"{path} is a folder, not a checkpoint: give a file, e.g. {path / BEST}")
    if path.exists() and not path.is_file():
        raise TrainError(f"{path} is not a file: give a checkpoint file")
    if not path.is_file():
        raise TrainError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainError(
            f"{path} is not a readable checkpoint: {str(err).strip().splitlines()[0]}"
        ) from None


def load_checkpoint(path: str | Path) -> dict:
    """Load a smp-lite checkpoint; never runs code from the file (weights_only)."""
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a smp-lite checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def load_backbone(model: nn.Module, path: str | Path, arch: str) -> None:
    """Initialise the `arch` backbone of `model` (a MotionNet/ActionNet, or a Backbone itself)
    from `path`: a smp-lite checkpoint of any task, or a state dict of the original PRP/SMP code
    (c3d, r3d10, r21d10). A mismatch raises a one-line TrainError naming what is wrong."""
    backbone = getattr(model, "backbone", model)
    path = Path(path)
    state = read_torch_file(path)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        if state["arch"] != arch:
            raise TrainError(f"checkpoint {path} holds a {state['arch']} backbone, not {arch}")
        prefix = "backbone."
        weights = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    else:
        weights = from_original(state, arch, path)

    expected = backbone.state_dict()
    for key, value in weights.items():
        if key not in expected:
            raise TrainError(f"{path}: unexpected key {key!r} for a {arch} backbone")
        if value.shape != expected[key].shape:
            raise TrainError(
                f"{path}: {key} has shape {tuple(value.shape)}, "
                f"the {arch} backbone needs {tuple(expected[key].shape)}"
            )
    # BatchNorm's step counter is absent from checkpoints of PyTorch 0.4.0 and used by nothing
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    if missing:
        raise TrainError(f"{path} lacks {len(missing)} tensors of a {arch} backbone: {missing[0]}")
    backbone.load_state_dict(weights, strict=False)


# ---------------------------------------------------------------------------------------------
# Checkpoints of the original PRP/SMP code


def from_original(state: object, arch: str, path: Path) -> dict[str, torch.Tensor]:
    """The backbone tensors of an original PRP/SMP checkpoint, under smp-lite's names.

    Accepts a plain state dict or one wrapped as {"state_dict": ...} or {"model": ...}, with keys
    `module.base_network.<name>` (DataParallel around the task model), `base_network.<name>` or
    just `<name>`; the task's heads and decoder (keys outside base_network) are left out.
    """
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not (isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values())):
        raise TrainError(f"{path} is neither a smp-lite checkpoint nor a state dict")
    weights = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("base_network.") for k in weights):
        weights = {
            k.removeprefix("base_network."): v
            for k, v in weights.items()
            if k.startswith("base_network.")
        }
    else:  # a bare backbone; a fine-tuned one also holds its classifier, `linear`
        weights = {k: v for k, v in weights.items() if not k.startswith("linear.")}

    held = original_arch(weights)
    if held is not None and held != arch:
        raise TrainError(f"checkpoint {path} holds a {held} backbone (original code), not {arch}")
    if arch not in ORIGINAL_ARCHS:
        first = next(iter(weights))
        raise TrainError(
            f"{path}: unexpected key {first!r}: not a smp-lite checkpoint, and the original "
            f"PRP/SMP code has no {arch} (only {', '.join(ORIGINAL_ARCHS)})"
        )
    names = original_names(arch)
    converted = {}
    for key, value in weights.items():
        module, _, param = key.rpartition(".")
        if module not in names:
            raise TrainError(
                f"{path}: unexpected key {key!r} for a {arch} backbone of the original code"
            )
        converted[f"{names[module]}.{param}"] = value
    return converted


def original_arch(weights: dict[str, torch.Tensor]) -> str | None:
    """Which original backbone names these keys are, from a module only it has."""
    if any(k.startswith("conv3a.") for k in weights):
        return "c3d"
    if any(".temporal_spatial_conv." in k for k in weights):
        return "r3d10"
    if any(".temporal_conv." in k for k in weights):
        return "r21d10"
    return None


def original_names(arch: str) -> dict[str, str]:
    """Module names of an original PRP/SMP backbone -> those of smp-lite's `build_backbone(arch)`.

    C3D (PRP models/c3d.py): conv1, bn1, conv2, bn2, conv3a, bn3a, conv3b, bn3b, ..., conv5b, bn5b.
    R3DNet and R2Plus1DNet with layer sizes (1,1,1,1) (VCOP models/r3d.py, r21d.py): stem conv1 +
    bn1, then layers conv2..conv5 of one `block1` each: conv1, bn1, conv2, bn2 and, from conv3
    on, the shortcut downsampleconv + downsamplebn. Each of their convs is a SpatioTemporalConv
    holding `temporal_spatial_conv` (R3D) or `spatial_conv`, `bn`, `temporal_conv` (R(2+1)D).
    """
    if arch == "c3d":  # smp-lite: stage.layer, each layer a conv_bn_relu (conv .0, bn .1)
        layers = ["1", "2", "3a", "3b", "4a", "4b", "5a", "5b"]
        places = ["0.0", "1.0", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1"]
        names = {}
        for layer, place in zip(layers, places, strict=True):
            names[f"conv{layer}"] = f"stages.{place}.0"
            names[f"bn{layer}"] = f"stages.{place}.1"
        return names

    def conv(original: str, ours: str) -> dict[str, str]:
        if arch == "r3d10":
            return {f"{original}.temporal_spatial_conv": ours}
        # smp-lite's (2+1)D conv is Sequential(spatial conv, BN, ReLU, temporal conv)
        return {
            f"{original}.spatial_conv": f"{ours}.0",
            f"{original}.bn": f"{ours}.1",
            f"{original}.temporal_conv": f"{ours}.3",
        }

    names = conv("conv1", "stages.0.0") | {"bn1": "stages.0.1"}
    for stage in range(1, 5):  # smp-lite: torchvision's BasicBlock, conv1 = (conv, BN, ReLU)
        block, ours = f"conv{stage + 1}.block1", f"stages.{stage}.0"
        names |= conv(f"{block}.conv1", f"{ours}.conv1.0") | {f"{block}.bn1": f"{ours}.conv1.1"}
        names |= conv(f"{block}.conv2", f"{ours}.conv2.0") | {f"{block}.bn2": f"{ours}.conv2.1"}
        if stage > 1:
            names |= conv(f"{block}.downsampleconv", f"{ours}.downsample.0")
            names[f"{block}.downsamplebn"] = f"{ours}.downsample.1"
    return names


# ---------------------------------------------------------------------------------------------
# Run folders: config.json, metrics.jsonl, last.pt and best.pt


def read_metrics(run: str | Path) -> list[dict]:
    """The per-epoch rows of a run folder's metrics.jsonl. A last line without its newline that
    does not parse is a row whose write a kill cut short: it is left out (a resume rewrites the
    file without it)."""
    path = Path(run) / METRICS
    # smp-lite writes ASCII (json.dumps): a byte that is not UTF-8 makes its line fail to parse
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break  # torn
            raise TrainError(
                f"{path}:{number}: not a metrics row ({err.msg} at column {err.colno})"
            ) from None
        if not (isinstance(row, dict) and isinstance(row.get("epoch"), int)):
            raise TrainError(f"{path}:{number}: not a metrics row (no epoch): {line[:80]}")
        rows.append(row)
    return rows


def append_metrics(out: Path, row: dict) -> None:
    """Add an epoch's row to metrics.jsonl in one write: a kill mid-write leaves a torn last
    line, which read_metrics leaves out."""
    line = json.dumps(row) + "\n"
    try:
        with open(out / METRICS, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as err:
        if out_of_space(err):
            raise TrainError(no_space_message(out / METRICS, len(line))) from None
        raise TrainError(f"cannot write to {out / METRICS}: {err.strerror}") from None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@contextlib.contextmanager
def run_folder(out: Path, resume: bool, overwrite: bool) -> Iterator[None]:
    """Hold `out` for one run (under torchrun, rank 0 does): create it, take its lock, finish
    what a killed run left there, refuse to mix two runs, move aside a run --overwrite replaces.
    A run that ends without saving last.pt leaves the folder as it found it: the run it replaced
    is put back, or the config.json of its failed start removed."""
    created = not out.exists()
    try:
        lock = take_lock(out)
        try:
            with sigterm_interrupts():
                if settle_overwrite(out):
                    note = "an --overwrite was killed before its first save: put back the run"
                    print(f"{out}: {note} it had moved aside", file=sys.stderr)
                for name in RUN_FILES:  # partial saves of a killed run
                    (out / f"{name}.tmp").unlink(missing_ok=True)
                check_out(out, resume, overwrite)
                if overwrite:
                    set_aside(out)
                try:
                    yield
                finally:
                    settle_overwrite(out)
                    if not holds_run(out):  # a failed start is not a run
                        for name in (CONFIG, METRICS):
                            (out / name).unlink(missing_ok=True)
        finally:
            release_lock(lock)
    finally:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: a refused or failed first start writes nothing


def holds_run(out: Path) -> bool:
    """A run is a folder with a checkpoint, a finished epoch's row or an evaluation's results; a
    config.json alone is a start that failed or was killed before its first save."""
    metrics = out / METRICS
    rows = metrics.is_file() and metrics.stat().st_size > 0
    return rows or any((out / name).is_file() for name in (LAST, BEST, RESULTS))


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder, to resume what is not there, and to write over a
    config.json that smp-lite did not write."""
    if resume and not (out / LAST).is_file():
        raise TrainError(
            f"nothing to resume: {out / LAST} does not exist; "
            "start the run without --resume (with --overwrite to replace what is there)"
        )
    if resume or overwrite:
        return
    if holds_run(out) and (out / LAST).is_file():
        raise TrainError(
            f"{out} already holds a run: pass --resume to continue it or --overwrite to replace it"
        )
    if holds_run(out):
        raise TrainError(
            f"{out} already holds a run, without the last.pt a resume needs: "
            "pass --overwrite to replace it"
        )
    if (out / CONFIG).is_file() and not is_run_config(out / CONFIG):
        raise TrainError(
            f"{out / CONFIG} is not a smp-lite run's: choose another --out, "
            "or pass --overwrite to replace it"
        )


def is_run_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"arch", "task", "version"} <= set(config)


def set_aside(out: Path) -> None:
    """Move the run --overwrite replaces into out/.previous: its files are gathered in
    .previous-moving, renamed as a whole; a kill halfway leaves .previous-moving, whose files
    settle_overwrite puts back."""
    files = [name for name in RUN_FILES if (out / name).exists()]
    if not files:
        return
    (out / MOVING).mkdir()
    for name in files:
        os.replace(out / name, out / MOVING / name)
    (out / MOVING).rename(out / PREVIOUS)


def settle_overwrite(out: Path) -> bool:
    """End an --overwrite: once the new run has saved last.pt the run it replaced is deleted
    (save_run does it at once); until then that run is put back, by a run that fails or by the
    next start after a kill. True when a run was put back."""
    previous, moving = out / PREVIOUS, out / MOVING
    if previous.is_dir() and (out / LAST).is_file():
        shutil.rmtree(previous, ignore_errors=True)
    elif previous.is_dir():
        for name in RUN_FILES:  # the new run's files: it saved no last.pt
            (out / name).unlink(missing_ok=True)
        previous.rename(moving)
    if not moving.is_dir():
        return False
    for path in moving.iterdir():
        os.replace(path, out / path.name)
    moving.rmdir()
    return True


def write_run_folder(out: Path, config: dict, epochs_done: int) -> None:
    """Write the run's config.json; on resume keep the metrics rows of the `epochs_done`
    epochs last.pt holds (a kill after a row was written repeats its epoch). Both atomically."""
    try:
        if config["resume"]:
            rows = read_metrics(out) if (out / METRICS).is_file() else []
            kept = "".join(json.dumps(r) + "\n" for r in rows if r["epoch"] <= epochs_done)
            write_text(out / METRICS, kept)
        meta = {**config, "version": __version__, "git_commit": git_commit()}
        write_text(out / CONFIG, json.dumps(meta, indent=2) + "\n")
    except OSError as err:
        raise TrainError(f"cannot write to output folder {out}: {err.strerror}") from None


def write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data), len(data))


# ---------------------------------------------------------------------------------------------
# One run per folder: run.lock


def take_lock(out: Path) -> Path:
    """Create out/run.lock naming this process: host, pid, start time. O_CREAT|O_EXCL makes the
    creation atomic, on NFSv3 and later too: of two runs, one gets it. A lock whose process is
    gone (this host, no such pid) is taken over; any other is refused in one line."""
    lock = out / LOCK
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": started}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                take_over_if_stale(lock)
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(mine) + "\n")
            except OSError:
                lock.unlink()  # a full disk: a lock without its holder would stop every run
                raise
            return lock
    except OSError as err:
        raise TrainError(f"cannot write to output folder {out}: {err.strerror}") from None
    raise TrainError(f"{lock} keeps changing: is another run starting in {out}?")


def take_over_if_stale(lock: Path) -> None:
    """Delete `lock` if the run that took it is gone; else refuse, naming that run."""
    text = read_lock(lock)
    if text is None:
        return  # released meanwhile
    holder = parse_lock(text)
    if holder is None:
        raise TrainError(f"{lock} is not a smp-lite lock: if no run uses the folder, delete it")
    host, pid, started = holder["host"], holder["pid"], holder["started"]
    if host != socket.gethostname():  # no way to see another machine's processes
        raise TrainError(
            f"{lock.parent} is in use by a run on {host} (pid {pid}, started {started}); "
            f"if that run is over (killed, or its machine went down), delete {lock}"
        )
    if pid_alive(pid):
        raise TrainError(
            f"{lock.parent} is in use by another run (pid {pid}, started {started}): wait for "
            f"it to end or choose another --out; if pid {pid} is no smp-lite run, delete {lock}"
        )
    note = f"the run that held it (pid {pid}, started {started}) is gone"
    print(f"taking over {lock}: {note}", file=sys.stderr)
    aside = lock.with_name(f"{LOCK}.{os.getpid()}")
    try:
        os.rename(lock, aside)  # of two runs taking the lock over, one moves it
    except FileNotFoundError:
        return
    if aside.read_text() != text:  # another run took it over first: give its lock back
        with contextlib.suppress(FileExistsError):
            os.link(aside, lock)
    aside.unlink()


def read_lock(lock: Path) -> str | None:
    """The lock's text, waiting a little for a lock being written; None once it is gone."""
    for _ in range(20):
        try:
            text = lock.read_text()
        except FileNotFoundError:
            return None
        if text.endswith("\n"):
            break
        time.sleep(0.05)
    return text


def parse_lock(text: str) -> dict | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    keys = {"host": str, "pid": int, "started": str}
    ok = isinstance(holder, dict) and all(isinstance(holder.get(k), t) for k, t in keys.items())
    return holder if ok and holder["pid"] > 0 else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def release_lock(lock: Path) -> None:
    """Delete the lock if it is still this process's (deleted by hand, it may be another's)."""
    holder = parse_lock(read_lock(lock) or "")
    if holder and (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid()):
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM (a scheduler's stop) raise KeyboardInterrupt, so that the run folder is
    released on the way out; the training loop sets its own handler, which saves first."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# settings that make a run what it is: resuming with other values would not continue it
RUN_SETTINGS = (
    "arch task split batch_size clip_len resize crop train_crop clips_per_video val_fraction "
    "lam_schedule mg schedule seed"
).split()
SETTINGS_BEFORE = {"clips_per_video": 1}  # the value of runs saved before a setting existed


def check_compatible(state: dict, config: dict, classes: tuple[str, ...], path: Path) -> None:
    if state["arch"] != config["arch"] or state["task"] != config["task"]:
        raise TrainError(
            f"{path} holds a {state['task']} {state['arch']} run, not "
            f"{config['task']} {config['arch']}"
        )
    saved, now = state["config"], config
    for key in RUN_SETTINGS:
        before = saved.get(key, SETTINGS_BEFORE.get(key))
        if before != now.get(key):
            raise TrainError(
                f"{path} was run with {key} {before!r}, not {now.get(key)!r}: "
                "resume with the options the run started with"
            )
    if list(state["classes"]) != list(classes):
        raise TrainError(f"{path} was trained on other classes than those of {config['data']}")
