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

LOCK = "run.lock"  # while a run holds its folder
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
