"""What several test modules share: tiny run settings, runs by hand, torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

from smp_lite.harness.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from smp_lite.harness.folders import write_run_folder
from smp_lite.train import make_config

TINY = dict(clip_len=8, resize=(32, 40), crop=32, workers=0, precision="fp32")


def tiny_config(data, out, **kw):
    """Clips of 8x32x32 and two batches per epoch: a step takes ~0.2 s on a CPU."""
    settings = dict(
        arch="r3d10",
        data=str(data),
        out=str(out),
        epochs=3,
        batch_size=4,
        clip_len=8,
        resize=(32, 40),
        crop=32,
        workers=0,
        limit_batches=2,
        val_fraction=0.25,
        precision="fp32",
    )
    return make_config(kw.pop("task", "smp"), "quick", **(settings | kw))


def tiny_pretrain_args(data, out, *extra: str) -> list[str]:
    args = ["-m", "smp_lite.cli", "pretrain", "--arch", "r3d10", "--data", f"synth:{data}"]
    args += ["--out", str(out), "--batch-size", "2", "--clip-len", "8", "--resize", "32x40"]
    args += ["--crop", "32", "--workers", "0", "--val-fraction", "0.25", "--precision", "fp32"]
    return [*args, "--no-progress", *extra]


TORCHRUN_ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def torchrun_command(args: list[str], nproc: int = 2) -> list[str]:
    """`nproc` real processes on this CPU in a gloo process group, as torchrun starts them."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*command, "--nproc-per-node", str(nproc), *args]


def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_command(args), cwd=cwd, env=TORCHRUN_ENV, capture_output=True, text=True
    )


def write_run(folder, task: str, arch: str = "r3d10", saved: float = 0.0, files=("best.pt",)):
    """A run folder by hand: config.json as runs write it and tiny checkpoints `files`, saved
    at `saved` seconds after 1e9 (their modification time)."""
    folder.mkdir(parents=True)
    write_run_folder(folder, {"arch": arch, "task": task, "init": "random", "resume": False}, 0)
    for name in files:
        save_checkpoint(folder / name, {"format": CHECKPOINT_FORMAT, "arch": arch, "task": task})
        os.utime(folder / name, (1e9 + saved, 1e9 + saved))
    return folder
