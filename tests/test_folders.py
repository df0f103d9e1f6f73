from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from smp_lite.errors import TrainError
from smp_lite.harness.checkpoint import RunState, save_run
from smp_lite.harness.folders import read_metrics, run_folder

# ---------------------------------------------------------------------------------------------
# metrics.jsonl (docs/reliability.md)


def test_metrics_leave_out_a_torn_last_line_and_name_any_other_bad_line(tmp_path) -> None:
    rows = '{"epoch": 1, "train_loss": 2.0}\n{"epoch": 2, "train_loss": 1.5}\n'
    (tmp_path / "metrics.jsonl").write_text(rows + '{"epoch": 3, "train_lo')  # killed mid-row
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    (tmp_path / "metrics.jsonl").write_text(rows + '{"epoch": 3}')  # no newline, but whole
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    for text, line in [
        ('{"epoch": 1}\n{"epo\n{"epoch": 3}\n', 2),  # torn in the middle: not a kill
        ('{"epoch": 1}\n{"epoch": 2\n', 2),  # a last line with its newline is whole
        ('{"epoch": 1}\n\xff\xfe\n', 2),
        ('{"epoch": 1}\n[1, 2]\n', 2),
    ]:
        (tmp_path / "metrics.jsonl").write_bytes(text.encode("latin-1"))
        with pytest.raises(TrainError, match=rf"metrics.jsonl:{line}: not a metrics row"):
            read_metrics(tmp_path)


# ---------------------------------------------------------------------------------------------
# One run per folder: the lock, --overwrite, failed starts (docs/reliability.md)


def test_a_second_run_is_refused_at_once_naming_the_first(tmp_path) -> None:
    out = tmp_path / "run"
    with run_folder(out, resume=False, overwrite=False):
        (out / "config.json").write_text("{}")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        holder = rf"\(pid {os.getpid()}, host {re.escape(socket.gethostname())}, started [-\d: ]+\)"
        message = rf"^{re.escape(str(out))} is in use by another run {holder}: wait for it to end"
        with pytest.raises(TrainError, match=message) as refused:
            with run_folder(out, resume=False, overwrite=True):
                pytest.fail("admitted")
        assert "\n" not in str(refused.value)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert not (out / "run.lock").exists()
    with run_folder(out, resume=False, overwrite=True):  # released: the next run gets in
        pass


# holds a folder, with a forked child (a DataLoader worker) that outlives it
HOLD = """
import os, sys, time
from pathlib import Path
from smp_lite.harness.folders import run_folder
with run_folder(Path(sys.argv[1]), resume=False, overwrite=False):
    worker = os.fork()
    if worker == 0:
        time.sleep(60)
        os._exit(0)
    print(worker, flush=True)
    time.sleep(60)
"""


def test_a_run_killed_with_sigkill_blocks_no_one(tmp_path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        worker = int(holder.stdout.readline())
        with pytest.raises(TrainError, match=rf"in use by another run \(pid {holder.pid}, "):
            with run_folder(out, resume=False, overwrite=False):
                pytest.fail("admitted")
        holder.kill()
        holder.wait()
        assert (out / "run.lock").is_file()  # left behind, and its worker lives on
        with run_folder(out, resume=False, overwrite=False):
            assert (out / "run.lock").read_text().startswith(f"pid {os.getpid()}, ")
        os.kill(worker, signal.SIGKILL)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "run.lock").exists()


def test_a_run_in_a_new_folder_releases_it_on_errors_and_sigterm(tmp_path) -> None:
    out = tmp_path / "a" / "run"
    for fault in (ValueError("bad"), "sigterm"):
        with pytest.raises((ValueError, KeyboardInterrupt)):
            with run_folder(out, resume=False, overwrite=False):
                assert (out / "run.lock").is_file()
                if fault == "sigterm":  # what a scheduler sends, before training sets its handler
                    os.kill(os.getpid(), signal.SIGTERM)
                raise fault
        assert not out.exists()  # lock released, the folder it created removed
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def write_run(out, tag: str) -> dict[str, bytes]:
    """A finished run's files, each holding `tag`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "config.json": json.dumps({"arch": "c3d", "task": "prp", "version": tag}).encode(),
        "metrics.jsonl": f'{{"epoch": 1, "tag": "{tag}"}}\n'.encode(),
        "best.pt": f"best {tag}".encode(),
        "last.pt": f"last {tag}".encode(),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


def run_files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_overwrite_keeps_the_previous_run_until_the_new_one_saves_last_pt(tmp_path) -> None:
    out = tmp_path / "run"
    old = write_run(out, "old")
    with pytest.raises(ValueError):  # a new run that fails before its first save
        with run_folder(out, resume=False, overwrite=True):
            assert not (out / "last.pt").exists() and (out / ".previous" / "last.pt").is_file()
            (out / "config.json").write_text("new")
            (out / "best.pt").write_text("new best")
            raise ValueError("bad option found when the data is read")
    assert run_files(out) == old and not (out / ".previous").exists()
    with run_folder(out, resume=False, overwrite=True):  # one that saves
        save_run(out / "last.pt", {"arch": "c3d", "task": "prp"}, (), {}, RunState(), {})
        assert not (out / ".previous").exists()  # gone at the first last.pt
    assert run_files(out)["last.pt"] != old["last.pt"] and "metrics.jsonl" not in run_files(out)


@pytest.mark.parametrize("killed", ["setting aside", "before the first save", "after it"])
def test_an_overwrite_killed_halfway_is_settled_at_the_next_start(killed, tmp_path, capsys):
    out = tmp_path / "run"
    old = write_run(out, "old")
    if killed == "setting aside":  # two files moved of four
        (out / ".previous-moving").mkdir()
        for name in ("last.pt", "best.pt"):
            (out / name).rename(out / ".previous-moving" / name)
    else:
        (out / ".previous").mkdir()
        for name in old:
            (out / name).rename(out / ".previous" / name)
        (out / "config.json").write_text('{"arch": "c3d", "task": "prp", "version": "new"}')
        if killed == "after it":
            (out / "last.pt").write_text("last new")
    with pytest.raises(TrainError, match="already holds a run"):
        with run_folder(out, resume=False, overwrite=False):
            pass
    assert not (out / ".previous").exists() and not (out / ".previous-moving").exists()
    if killed == "after it":
        new = b'{"arch": "c3d", "task": "prp", "version": "new"}'
        assert run_files(out) == {"config.json": new, "last.pt": b"last new"}
    else:
        assert run_files(out) == old  # the replaced run is back, whole
        note = "an --overwrite was killed before its first save: put back the run it had moved"
        assert note in capsys.readouterr().err


def test_a_failed_start_is_not_a_run(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError):
        with run_folder(out, resume=False, overwrite=False):
            (out / "config.json").write_text('{"arch": "c3d", "task": "prp", "version": "1"}')
            raise ValueError("no training video is left")
    assert run_files(out) == {"notes.txt": b"mine"}  # its config.json went with it
    # a start killed outright leaves its config.json: the next start is not refused for it
    (out / "config.json").write_text('{"arch": "c3d", "task": "prp", "version": "1"}')
    (out / "last.pt.tmp").write_bytes(b"partial")
    with run_folder(out, resume=False, overwrite=False):
        assert not (out / "last.pt.tmp").exists()  # a killed save's partial file is removed
    with pytest.raises(TrainError, match="nothing to resume"):
        with run_folder(out, resume=True, overwrite=False):
            pass
    # a config.json that smp-lite did not write is not replaced unasked
    (out / "config.json").write_text('{"lr": 3}')
    with pytest.raises(TrainError, match=r"config.json is not a smp-lite run's: choose another"):
        with run_folder(out, resume=False, overwrite=False):
            pass
    assert (out / "config.json").read_text() == '{"lr": 3}'


def test_a_run_without_last_pt_is_kept_and_needs_overwrite(tmp_path) -> None:
    out = tmp_path / "run"
    files = write_run(out, "old")
    (out / "last.pt").unlink()  # killed between best.pt and last.pt of its first epoch
    for resume, message in [(False, "without the last.pt a resume needs: pass --overwrite"),
                            (True, "nothing to resume")]:  # fmt: skip
        with pytest.raises(TrainError, match=message):
            with run_folder(out, resume=resume, overwrite=False):
                pass
    assert run_files(out) == {k: v for k, v in files.items() if k != "last.pt"}
