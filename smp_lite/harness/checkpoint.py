"""Checkpoints: what a run saves and restores, in one smp-lite checkpoint format for every
task; atomic saves; loading a backbone from a smp-lite checkpoint or from one of the original
PRP/SMP code; the settings a resumed run must share with the saved one. The run folder around
the checkpoints (its lock, config.json, metrics.jsonl) is folders.py's.

A smp-lite checkpoint is a dict with "format" = CHECKPOINT_FORMAT, the architecture, task and
configuration of its run, the state of each of its objects (model, optimizer, ...), and where
the run stands (`RunState`): `save_run` writes one, `load_run` puts a run back where it was.
Every load uses `torch.load(weights_only=True)`: a checkpoint file never runs code.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from .. import __version__
from ..config import KEPT_ON_RESUME
from ..errors import MissingPath, TrainError

CHECKPOINT_FORMAT = "smp-lite/1"
CONFIG, METRICS, BEST, LAST = "config.json", "metrics.jsonl", "best.pt", "last.pt"
BACKBONE = "backbone.pt"  # smp-lite export: the backbone alone
RESULTS, FEATURES = "results.json", "features.pt"  # an evaluation's numbers, a probe's cache
FEATURES_PARTIAL = "features.partial.pt"  # a probe's cache, cut short by Ctrl-C
# what a run writes in its folder
RUN_FILES = (CONFIG, METRICS, BEST, LAST, RESULTS, FEATURES, FEATURES_PARTIAL, BACKBONE)
PREVIOUS = ".previous"  # the run --overwrite replaces, until the new run saves last.pt
ORIGINAL_ARCHS = ("c3d", "r3d10", "r21d10")  # the backbones the original PRP/SMP code has


@dataclass
class RunState:
    """Where a run stands: `epoch` epochs done, then `batches_done` batches of the next."""

    epoch: int = 0
    batches_done: int = 0
    step: int = 0
    best_val: float = math.inf
    skipped: set[str] = field(default_factory=set)  # videos the loaders could not read
    metric_state: dict = field(default_factory=dict)  # the unfinished epoch's training metrics


def save_run(
    path: Path,
    config: dict,
    classes: tuple[str, ...],
    objects: dict[str, Any],
    run_state: RunState,
    row: dict,
) -> None:
    """Save the state of each object (model; for last.pt also optimizer, scheduler, scaler), the
    progress, the random generators, and `row`, the metrics of the last finished epoch: with
    all of them a resumed run goes on as this one would."""
    cuda_rng = {"rng_cuda": torch.cuda.get_rng_state()} if torch.cuda.is_initialized() else {}
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "arch": config["arch"],
        "task": config["task"],
        "config": config,
        "classes": list(classes),
        **{name: obj.state_dict() for name, obj in objects.items()},
        "epoch": run_state.epoch,
        "batches_done": run_state.batches_done,
        "step": run_state.step,
        "best_val": run_state.best_val,
        "skipped_videos": sorted(run_state.skipped),
        "metric_state": run_state.metric_state,
        "metrics": row,
        "rng_cpu": torch.get_rng_state(),
        **cuda_rng,
    }
    save_checkpoint(path, state)
    if path.name == LAST:  # this run can resume: the run it replaced goes
        shutil.rmtree(path.parent / PREVIOUS, ignore_errors=True)


def load_run(
    path: Path, config: dict, classes: tuple[str, ...], objects: dict[str, Any]
) -> RunState:
    """Put each object back in the state `path` saved, after checking that the run configured
    as `config` continues it; returns where the saved run stood."""
    state = load_checkpoint(path)
    check_compatible(state, config, classes, path)
    for name, obj in objects.items():
        obj.load_state_dict(state[name])
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng_cuda"])
    return RunState(
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
        raise MissingPath(f"checkpoint {path} does not exist", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        said = (str(err).strip().splitlines() or [""])[0][:120]
        raise TrainError(
            f"{path} is not a readable checkpoint (cut short, or not a file torch.save wrote; "
            f"torch.load said {type(err).__name__}: {said})"
        ) from None


def load_checkpoint(path: str | Path) -> dict:
    """Load a smp-lite checkpoint; never runs code from the file (weights_only)."""
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a smp-lite checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def export_backbone(source: str | Path, out: str | Path | None = None) -> Path:
    """Write the backbone of a smp-lite checkpoint (or of a run folder's best.pt, else last.pt)
    alone, with its arch, task and config: all that `--init` reads. Returns the file written,
    by default backbone.pt beside the checkpoint."""
    path = Path(source)
    if path.is_dir():
        path = next((path / name for name in (BEST, LAST) if (path / name).is_file()), path)
    state = load_checkpoint(path)
    weights = {k: v for k, v in state["model"].items() if k.startswith("backbone.")}
    if not weights:
        raise TrainError(f"{path} holds no backbone (a probe's is a linear layer on features)")
    out = Path(out) if out else path.parent / BACKBONE
    keep = ("format", "version", "arch", "task", "config", "classes", "epoch", "metrics")
    save_checkpoint(out, {**{k: state[k] for k in keep if k in state}, "model": weights})
    return out


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


SETTINGS_BEFORE = {"clips_per_video": 1}  # its value in runs saved before it existed


def check_compatible(state: dict, config: dict, classes: tuple[str, ...], path: Path) -> None:
    if state["arch"] != config["arch"] or state["task"] != config["task"]:
        raise TrainError(
            f"{path} holds a {state['task']} {state['arch']} run, not "
            f"{config['task']} {config['arch']}"
        )
    saved, now = state["config"], config
    for key in KEPT_ON_RESUME:  # a setting a config lacks has its value of before it existed
        before, after = (c.get(key, SETTINGS_BEFORE.get(key)) for c in (saved, now))
        if before != after:
            raise TrainError(
                f"{path} was run with {key} {before!r}, not {after!r}: "
                "resume with the options the run started with"
            )
    if list(state["classes"]) != list(classes):
        raise TrainError(f"{path} was trained on other classes than those of {config['data']}")
