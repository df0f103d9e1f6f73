"""Run folders: one run per folder, held by its run.lock; config.json and metrics.jsonl;
an --overwrite that keeps the run it replaces until the new one has saved last.pt; SIGTERM as
a stop that releases the folder. The checkpoints in the folder are checkpoint.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .. import __version__
from ..errors import TrainError
from .checkpoint import (
    BEST,
    CONFIG,
    FEATURES,
    FEATURES_PARTIAL,
    LAST,
    METRICS,
    PREVIOUS,
    RESULTS,
    RUN_FILES,
    no_space_message,
    out_of_space,
    write_atomic,
)

LOCK = "run.lock"  # flock()ed by the run that holds the folder; names it
MOVING = ".previous-moving"  # files on their way into or out of .previous


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
    return rows or any((out / name).is_file() for name in (LAST, BEST, RESULTS, *CACHES))


CACHES = (FEATURES, FEATURES_PARTIAL)  # a probe's features: a resume goes on from them


def resumable(out: Path) -> bool:
    return any((out / name).is_file() for name in (LAST, *CACHES))


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder, to resume what is not there, and to write over a
    config.json that smp-lite did not write."""
    if resume and not resumable(out):
        raise TrainError(
            f"nothing to resume: {out / LAST} does not exist; "
            "start the run without --resume (with --overwrite to replace what is there)"
        )
    if resume or overwrite:
        return
    if holds_run(out) and resumable(out):
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


def write_results(out: Path, results: dict) -> Path:
    """An evaluation's numbers as the run folder's results.json."""
    path = out / RESULTS
    path.write_text(json_text(results, indent=2))
    return path


# a list of plain numbers as json.dumps indents it: "[" then a newline, which no string holds
NUMBER_LIST = re.compile(r"\[\n[-+.\deE,\s]*\]")


def json_text(value: object, indent: int) -> str:
    """Indented JSON with each list of numbers on one line: per-item correctness holds one
    number per test clip, which would be as many lines."""
    text = json.dumps(value, indent=indent)
    return NUMBER_LIST.sub(lambda m: json.dumps(json.loads(m.group())), text) + "\n"


# ---------------------------------------------------------------------------------------------
# One run per folder: run.lock


def take_lock(out: Path) -> FileLock:
    """Hold out/run.lock with an OS lock (flock), at once or refused in one line naming its
    holder. The kernel drops the lock when the process ends, however it ends: a run killed with
    SIGKILL leaves a run.lock that blocks no one."""
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    holder = f"pid {os.getpid()}, host {socket.gethostname()}, started {started}\n"
    lock = FileLock(out / LOCK, timeout=0, on_acquired=lambda fd: write_holder(fd, holder))
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:  # before OSError, which it is
        raise TrainError(
            f"{out} is in use by another run{holder_of(out)}: "
            "wait for it to end or choose another --out"
        ) from None
    except OSError as err:
        raise TrainError(f"cannot write to output folder {out}: {err.strerror}") from None
    return lock


def write_holder(fd: int, holder: str) -> None:
    """Name the run in the lock file it holds, through the lock's own descriptor."""
    os.ftruncate(fd, 0)  # a killed holder's text
    os.write(fd, holder.encode())


def holder_of(out: Path) -> str:
    """' (pid N, host H, started T)' from a held run.lock; '' while its holder writes it."""
    try:
        text = (out / LOCK).read_text(errors="replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


def release_lock(lock: FileLock) -> None:
    """Delete run.lock, then unlock it: a run that opened it just before then locks a deleted
    file, which filelock gives up, so it is refused, never admitted beside the next run."""
    with contextlib.suppress(OSError):
        Path(lock.lock_file).unlink()
    lock.release()


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
