from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace

import pytest
import torch
from helpers import write_run
from typer.testing import CliRunner

import smp_lite.probe
import smp_lite.tools.synth
from smp_lite import evaluate
from smp_lite.cli import PANELS, app
from smp_lite.config import (
    ARCHS,
    DEFAULT_DATA,
    PRESETS,
    BenchConfig,
    FinetuneConfig,
    ProbeConfig,
    RetrieveConfig,
    TrainConfig,
    check_settings,
)
from smp_lite.errors import ConfigError, RunInterrupted
from smp_lite.harness import engine
from smp_lite.harness.checkpoint import (
    CHECKPOINT_FORMAT,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
)
from smp_lite.harness.folders import read_metrics, write_run_folder
from smp_lite.models import MotionNet
from smp_lite.tools.synth import synthesize

runner = CliRunner()


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # rich may colour the help


def words(text: str) -> str:
    """The help's words in one line: the wrapping and the panels' borders undone."""
    return " ".join(re.sub("[│╭╮╰╯]", " ", plain(text)).split())


def help_panels(command: str) -> dict[str, str]:
    """A command's --help, panel by panel: title -> its options' text."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    parts = re.split(r"╭─ (\w+) ─+╮", plain(result.output))
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_top_level_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "pretrain" in result.output and "data" in result.output


def test_help_imports_neither_torch_nor_decord() -> None:
    """--help reads the settings from the torch-free config.py: it starts in a fraction of a
    second instead of the seconds torch, torchmetrics and decord take to import."""
    heavy = "{'torch', 'decord', 'torchmetrics'}"
    code = f"import sys, smp_lite.cli; print(sorted({heavy} & set(sys.modules)))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "command, options",
    [
        (
            ["pretrain"],
            [
                "--arch",
                "--task",
                "--data",
                "--epochs",
                "--batch-size",
                "--lr",
                "--preset",
                "--precision",
                "--resume",
                "--overwrite",
                "--lam-schedule",
                "--save-every",
                "--init-from",
                "--precise-bn",
            ],
        ),
        (
            ["probe"],
            ["--init", "motion-energy", "--target", "--standardize", "--refit-bn", "--features"],
        ),
        (["data", "synth"], ["--out", "--preset", "--seed", "--workers", "--figure"]),
        (["report"], ["RUN", "--figure", "--table"]),
        (["export"], ["RUN", "--out"]),
    ],
)
def test_every_option_is_explained(command, options) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = plain(result.output)
    for option in options:
        assert option in text, option


TINY = [
    "--arch",
    "r3d10",
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--clip-len",
    "8",
    "--resize",
    "32x40",
    "--crop",
    "32",
    "--workers",
    "0",
    "--val-fraction",
    "0.25",
    "--precision",
    "fp32",
    "--no-progress",
]


@pytest.mark.slow
def test_pretrain_with_no_data_given_generates_the_default_dataset(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    made = []

    def tiny_synthesize(out):  # the tiny preset: the default one takes minutes
        made.append(out)
        return synthesize(out, preset="tiny", progress=False)

    monkeypatch.setattr(smp_lite.tools.synth, "synthesize", tiny_synthesize)
    result = runner.invoke(app, ["pretrain", *TINY, "--limit-batches", "1", "--out", "run"])
    assert result.exit_code == 0, result.output
    assert made == [DEFAULT_DATA] and (tmp_path / DEFAULT_DATA / "classInd.txt").is_file()
    assert "generating the default one in data/synth" in result.output
    assert len(read_metrics(tmp_path / "run")) == 1


@pytest.mark.slow
def test_pretrain_end_to_end(ucf_tiny, tmp_path) -> None:
    out = tmp_path / "run"
    args = [
        "pretrain",
        *TINY,
        "--arch",
        "c3d",
        "--task",
        "prp",
        "--data",
        f"synth:{ucf_tiny}",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--limit-batches",
        "2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "done:" in result.output
    assert len(read_metrics(out)) == 2
    assert load_checkpoint(out / "best.pt")["arch"] == "c3d"
    result = runner.invoke(app, ["export", str(out)])
    assert result.exit_code == 0 and result.output.startswith(f"backbone: {out / 'backbone.pt'}")
    sizes = [(out / name).stat().st_size for name in ("backbone.pt", "best.pt", "last.pt")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[2] / 2  # no decoder, heads, optimizer
    model, exported = MotionNet("c3d"), load_checkpoint(out / "backbone.pt")
    load_backbone(model, out / "backbone.pt", "c3d")
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, exported["model"][f"backbone.{key}"])
    for bad, code in ((out / "metrics.jsonl", 1), (tmp_path / "none", 2)):
        result = runner.invoke(app, ["export", str(bad)])
        assert result.exit_code == code and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--arch", "vgg16"], 2, "unknown architecture 'vgg16'"),
        (["--task", "jigsaw"], 2, "unknown task 'jigsaw'"),
        (["--epochs", "0"], 2, "epochs must be positive"),
        (["--epochs", "-3"], 2, "epochs must be positive"),
        (["--batch-size", "0"], 2, "batch size must be positive"),
        (["--batch-size", "-1"], 2, "batch size must be positive"),
        (["--crop", "50"], 2, "divisible by 16"),
        (["--resize", "big"], 2, "is not HxW"),
        (["--save-every", "-1"], 2, "save every must be 0 or more"),
        (["--data", "/no/such/folder"], 2, "does not exist"),
        (["--split", "4"], 2, "split must be 1, 2 or 3"),
        (["--crop", "0"], 2, "crop must be positive and divisible by 16, got 0"),
        (["--crop", "-32"], 2, "crop must be positive and divisible by 16, got -32"),
        (["--lr", "inf"], 2, "learning rate must be positive, got inf"),
        (["--head-lr-scale", "nan"], 2, "head lr scale must be positive, got nan"),
        (["--limit-batches", "-1"], 2, "limit batches must be 0 or more, got -1"),
        (["--seed", "-1"], 2, "seed must be in 0..4294967295"),
        (["--seed", "99999999999999999999"], 2, "seed must be in 0..4294967295"),
        (["--workers", "-1"], 2, "workers must be 0 or more"),
        (["--resume", "--overwrite"], 2, "pass --resume or --overwrite, not both"),
        (["--device", "gpu"], 2, "device must be auto, cpu, cuda or cuda:N, got gpu"),
        (["--device", "mps"], 2, "device must be auto, cpu, cuda or cuda:N, got mps"),
        (["--device", "cpu", "--precision", "fp16"], 2, "precision fp16 is for GPUs"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, code, message, tmp_path) -> None:
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_a_bad_setting_is_refused_before_pytorch_loads() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom smp_lite.cli import app\n"
        "result = CliRunner().invoke(app, ['pretrain', '--arch', 'vgg16'])\n"
        "print(result.exit_code, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr


@pytest.mark.parametrize(
    "device, gpus, message",
    [
        ("cuda", 0, "device 'cuda': PyTorch sees no CUDA GPU on this machine"),
        ("cuda:1", 0, "device 'cuda:1': PyTorch sees no CUDA GPU on this machine"),
        ("cuda:3", 2, "device 'cuda:3': this machine has 2 GPUs, cuda:0 to cuda:1"),
    ],
)
def test_a_gpu_this_machine_lacks_is_one_line(device, gpus, message, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "r"), "--device", device])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {message}"
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_exception(tmp_path) -> None:
    result = runner.invoke(app, ["--debug", "pretrain", "--out", str(tmp_path), "--epochs", "0"])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)


def test_a_folder_holding_another_run_is_left_alone(ucf_tiny, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"task": "prp"}\n')
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (out / "last.pt").write_bytes(b"weights")
    result = runner.invoke(app, ["pretrain", "--data", str(ucf_tiny), "--out", str(out), *TINY])
    assert result.exit_code == 1 and "already holds a run" in result.output
    assert "--resume" in result.output and "--overwrite" in result.output
    assert (out / "config.json").read_text() == '{"task": "prp"}\n'  # nothing lost
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert (out / "last.pt").read_bytes() == b"weights"


def write_bad_checkpoints(folder):
    """name -> (path, message): checkpoints --init-from must refuse in one line."""
    folder.mkdir()
    (folder / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated zip")
    c3d = {"format": CHECKPOINT_FORMAT, "arch": "c3d", "model": {}}
    save_checkpoint(folder / "c3d.pt", c3d)
    torch.save({"head.weight": torch.zeros(4, 8)}, folder / "stranger.pth")
    return {
        "missing": (folder / "none.pt", "does not exist"),
        "corrupt": (folder / "corrupt.pt", "is not a readable checkpoint"),
        "wrong architecture": (folder / "c3d.pt", "holds a c3d backbone, not r3d10"),
        "foreign keys": (folder / "stranger.pth", "unexpected key 'head.weight'"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty data root",
        "out under a file",
        "resume with nothing",
        "init-from missing",
        "init-from corrupt",
        "init-from wrong architecture",
        "init-from foreign keys",
        "init-from a folder",
        "list not utf-8",
    ],
)
def test_bad_runs_fail_in_one_line_with_their_exit_code(case, ucf_tiny, tmp_path) -> None:
    """1 for what fails at run time, 2 for a usage mistake (a path that does not exist)."""
    data, out, extra = str(ucf_tiny), tmp_path / "run", []
    if case == "empty data root":
        (tmp_path / "empty").mkdir()
        data, message = str(tmp_path / "empty"), "classInd.txt is missing"
    elif case == "out under a file":
        (tmp_path / "file").write_text("x")
        out, message = tmp_path / "file" / "run", "cannot write to output folder"
    elif case == "resume with nothing":
        extra, message = ["--resume"], "nothing to resume"
    elif case == "init-from a folder":
        (tmp_path / "old").mkdir()
        extra = ["--init-from", str(tmp_path / "old")]
        message = f"{tmp_path / 'old'} is a folder, not a checkpoint: give a file, e.g. "
    elif case == "list not utf-8":
        shutil.copytree(ucf_tiny, tmp_path / "latin1")
        trainlist = tmp_path / "latin1" / "trainlist01.txt"
        lines = trainlist.read_text().splitlines()
        lines[2] += " # \xe9t\xe9"  # Latin-1, as an editor may save it
        trainlist.write_bytes("\n".join(lines).encode("latin-1"))
        data, message = str(tmp_path / "latin1"), f"{trainlist}:3: not UTF-8 text (byte 0xe9)"
    else:
        path, message = write_bad_checkpoints(tmp_path / "ckpt")[case.removeprefix("init-from ")]
        extra = ["--init-from", str(path)]
    result = runner.invoke(app, ["pretrain", "--data", data, "--out", str(out), *TINY, *extra])
    assert result.exit_code == (2 if case == "init-from missing" else 1), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_data_synth_tiny(tmp_path) -> None:
    out = tmp_path / "synth"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert (out / "classInd.txt").is_file() and (out / "trainlist01.txt").is_file()
    bad = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--preset", "huge"])
    assert bad.exit_code != 0 and "huge" in bad.output


# ---------------------------------------------------------------------------------------------
# Killed and interrupted runs: the real command in a subprocess


def pretrain_command(data, out, *extra: str) -> list[str]:
    """Two epochs of three batches, last.pt after every step: ~1 s of training on a CPU."""
    options = [*TINY, "--task", "smp", "--epochs", "2", "--save-every", "1"]
    cli = [sys.executable, "-m", "smp_lite.cli"]
    return [*cli, "pretrain", "--data", f"synth:{data}", "--out", str(out), *options, *extra]


# one thread: the same float sums in every process, whatever the machine
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def start_and_stop_mid_epoch(command: list[str], out, sig: int) -> subprocess.Popen:
    """Start a run and send `sig` once a mid-epoch last.pt is there."""
    proc = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "last.pt").is_file() and load_checkpoint(out / "last.pt")["batches_done"] > 0:
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    proc.wait(timeout=120)
    return proc


def final_numbers(out) -> tuple[list[dict], dict]:
    rows = [{k: v for k, v in r.items() if k != "clips_per_s"} for r in read_metrics(out)]
    return rows, load_checkpoint(out / "last.pt")["model"]


@pytest.fixture(scope="module")
def uninterrupted(ucf_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(pretrain_command(ucf_tiny, out), env=ENV, check=True, capture_output=True)
    return final_numbers(out)


def assert_same_run(out, uninterrupted) -> None:
    rows, weights = final_numbers(out)
    assert rows == uninterrupted[0]  # losses and accuracies of both epochs, train and val
    assert [r["epoch"] for r in rows] == [1, 2]
    for name, value in uninterrupted[1].items():
        assert torch.equal(weights[name], value), name


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_numbers(ucf_tiny, tmp_path, uninterrupted):
    out = tmp_path / "run"
    killed = start_and_stop_mid_epoch(pretrain_command(ucf_tiny, out), out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] < 2 and state["batches_done"] > 0  # killed mid-epoch
    resumed = subprocess.run(
        pretrain_command(ucf_tiny, out, "--resume"), env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    # the killed run's run.lock is left, unlocked: it blocks nothing
    assert_same_run(out, uninterrupted)


@pytest.mark.slow
def test_ctrl_c_saves_and_prints_the_resume_command(ucf_tiny, tmp_path, uninterrupted):
    out = tmp_path / "run"
    stopped = start_and_stop_mid_epoch(pretrain_command(ucf_tiny, out), out, signal.SIGINT)
    stderr = stopped.stderr.read()
    assert stopped.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"interrupted: saved {out / 'last.pt'}" in stderr
    command = shlex.split(stderr.strip().splitlines()[-1])
    assert command[:2] == ["smp-lite", "pretrain"] and command[-3:] == [
        "--resume",
        "--out",
        str(out),
    ]
    saved = load_checkpoint(out / "last.pt")
    assert saved["batches_done"] > 0  # saved mid-epoch
    resumed = subprocess.run(
        [sys.executable, "-m", "smp_lite.cli", *command[1:]],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    opening, where = resumed.stdout.splitlines()[:2]
    assert opening.startswith("pretrain smp r3d10") and opening.endswith(f"-> {out}")
    assert where == f"resumed at epoch {saved['epoch'] + 1}, step {saved['step']}"
    assert_same_run(out, uninterrupted)


def test_help_shows_every_setting_with_its_default_from_the_config() -> None:
    result = runner.invoke(app, ["pretrain", "--help"])
    text = words(result.output)
    for f in fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')} " in text, f.name
    (paper, paper_sup), quick = PRESETS["paper"], PRESETS["quick"][0]
    assert f"[default: paper {paper.epochs}, quick {quick.epochs}]" in text
    assert f"[default: paper {paper.lr} (supervised {paper_sup.lr}), quick {quick.lr}" in text
    assert f"[default: {paper.save_every}]" in text and f"[default: {paper.precise_bn}]" in text
    assert "[kind:]PATH" in text  # help text is not read as markup


def test_help_groups_the_options_in_panels_and_shows_the_choices() -> None:
    panels = help_panels("pretrain")
    titles = ["Options", "Task", "Data", "Clips", "Optimisation", "Losses", "Hardware", "Run"]
    assert list(panels) == titles
    assert "--arch" in panels["Task"] and f"[{'|'.join(ARCHS)}]" in panels["Task"]
    assert "[smp|prp|supervised]" in panels["Task"] and "[paper|quick]" in panels["Task"]
    assert "--lam-schedule" in panels["Losses"] and "--mg " in panels["Losses"]
    assert "--rate-weight" in panels["Losses"] and "--mg-weight" in panels["Losses"]
    assert "[exp|log|sigmoid|plinear|linear|dpau|cam]" in panels["Losses"]
    assert "[pytorch|torchvision|zero-residual]" in panels["Task"]
    assert "[plateau|cosine]" in panels["Optimisation"] and "--lr " in panels["Optimisation"]
    assert "[random|center]" in panels["Clips"]
    assert "[auto|bf16|fp16|fp32]" in panels["Hardware"]
    assert "[auto|cpu|cuda|cuda:N]" in panels["Hardware"]
    assert "--no-progress" in panels["Run"] and "--resume" in panels["Run"]
    assert "STR " not in "".join(panels.values())  # every text setting says what it takes
    probe = help_panels("probe")
    assert "Losses" not in probe and "[speed|action]" in probe["Task"]
    for option in ("--features", "--standardize", "--refit-bn"):
        assert option in probe["Probe"], option


@pytest.mark.parametrize(
    "config",
    [TrainConfig, evaluate.ProbeConfig, evaluate.FinetuneConfig, evaluate.RetrieveConfig],
)
def test_every_setting_has_a_help_panel(config) -> None:
    shown = {name for names in PANELS.values() for name in names}
    assert {f.name for f in fields(config)} - shown == set()


CONFIGS = [TrainConfig, ProbeConfig, FinetuneConfig, RetrieveConfig, BenchConfig]


@pytest.mark.parametrize("config", CONFIGS)
def test_each_setting_is_declared_once_with_its_help_and_its_choices_checked(config) -> None:
    """A field's help, choices and check live on the field (config.setting): every one has a
    help text, and a value outside its choices is refused in one line naming them."""
    for f in fields(config):
        assert f.metadata["help"].strip(), f.name
        choices = [c for c in f.metadata["choices"] if c]
        for value in choices:
            check_settings(replace(config(), **{f.name: value}))
        if choices:
            with pytest.raises(ConfigError, match=f"choose one of .*{choices[-1]}"):
                check_settings(replace(config(), **{f.name: "other"}))


@pytest.mark.slow
def test_a_run_opens_with_one_line_and_prints_its_rows_without_bars(ucf_tiny, tmp_path) -> None:
    """--no-progress hides the bars only: a cluster log keeps the opening line and the rows."""
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(ucf_tiny), "--out", str(out), *TINY, "--device", "cpu"]
    result = runner.invoke(app, [*args, "--epochs", "2", "--limit-batches", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        f"pretrain smp r3d10 on {ucf_tiny} (paper preset): 8x32x32 clips, batch 2, 2 epochs, "
        f"cpu fp32 -> {out}"
    )
    assert sum(line.startswith("pretrain ") for line in lines) == 1
    rows = [line for line in lines if line.startswith("epoch=")]
    assert [row.split()[0] for row in rows] == ["epoch=1", "epoch=2"]
    for row in rows:
        assert re.search(r"  val_acc_rate_c5=[0-9.]+ \(chance 0\.25\)  ", row), row
    assert lines[-1].startswith(f"done: {out} ")


@pytest.mark.slow
def test_the_stop_message_starts_on_a_line_of_its_own(ucf_tiny, tmp_path, monkeypatch) -> None:
    """Not glued to the progress bar: the bar stays as it stopped and its line ends."""
    monkeypatch.setattr(engine, "stop_requested", lambda stop, runtime: True)  # Ctrl-C at step 1
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(ucf_tiny), "--out", str(out), *TINY, "--progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130, result.output
    lines = result.output.split("\n")
    bar = [line for line in lines if "epoch 1/1" in line]
    assert bar and "interrupted" not in bar[-1]  # the bar was shown, and its line ended
    assert lines[lines.index(bar[-1]) + 1].startswith(f"interrupted: saved {out / 'last.pt'}")


@pytest.mark.slow
def test_the_bar_redraws_at_its_own_pace_not_at_every_step(ucf_tiny, tmp_path) -> None:
    """The loss shown beside the bar waits for the bar's next redraw: a notebook, which keeps
    every redraw, holds a few lines an epoch (TQDM_MININTERVAL, read when tqdm is imported,
    hence a process of its own), not one per step."""
    command = pretrain_command(ucf_tiny, tmp_path / "run", "--progress", "--val-fraction", "0")
    env = ENV | {"TQDM_MININTERVAL": "1000"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for epoch in ("epoch 1/2", "epoch 2/2"):  # 3 steps each
        # text=True reads each "\r" as a line end: one line a redraw
        redraws = [line for line in done.stderr.splitlines() if epoch in line]
        assert 1 <= len(redraws) <= 2, redraws  # the first and perhaps the last, not per step


# ---------------------------------------------------------------------------------------------
# One run per folder, a full disk (docs/reliability.md)


@pytest.mark.slow
def test_two_runs_into_one_folder_at_once_admit_one(ucf_tiny, tmp_path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen(pretrain_command(ucf_tiny, out), env=ENV, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "run.lock").is_file() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = runner.invoke(app, ["pretrain", "--data", str(ucf_tiny), "--out", str(out), *TINY])
    assert second.exit_code == 1, second.output
    assert second.output.startswith(f"error: {out} is in use by another run (pid {first.pid}, ")
    assert len(second.output.strip().splitlines()) == 1
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]  # one run's rows, once each
    config = json.loads((out / "config.json").read_text())
    assert (config["epochs"], config["save_every"]) == (2, 1)  # the first run's
    assert not (out / "run.lock").exists()  # released at the end


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_keeps_the_saves_before(ucf_tiny, tmp_path, monkeypatch):
    out, calls, save = tmp_path / "run", [], torch.save

    def disk_full_at_the_second_save(state, f):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"x" * 4096)
            raise RuntimeError(
                "PytorchStreamWriter failed writing file data/3: No space left on device"
            )
        save(state, f)

    monkeypatch.setattr(torch, "save", disk_full_at_the_second_save)
    args = ["pretrain", "--data", str(ucf_tiny), "--out", str(out), *TINY, "--save-every", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    opening, line = result.output.strip().splitlines()  # the run started, then stopped
    assert opening.startswith("pretrain smp r3d10 on ")
    assert line.startswith(f"error: no space left in {out} to save last.pt: it needs about ")
    assert "MiB free" in line
    assert not list(out.glob("*.tmp")) and not (out / "run.lock").exists()
    assert load_checkpoint(out / "last.pt")["step"] == 1  # the save before is intact


# ---------------------------------------------------------------------------------------------
# The newcomer's path: pretrain, then evaluate what was pretrained (no --init)


def record_evaluations(monkeypatch) -> list:
    """Replace probe, fine-tuning and retrieval by a stand-in that records its config and
    returns a result: what the command line chose, without running anything."""
    configs = []

    def evaluation(cfg, progress=True):
        configs.append(cfg)
        return {"accuracy": 0.5, "accuracy_std": 0.1, "items": 8}

    monkeypatch.setattr(smp_lite.probe, "probe", evaluation)
    monkeypatch.setattr(evaluate, "finetune", evaluation)
    monkeypatch.setattr(evaluate, "retrieve", evaluation)
    return configs


@pytest.fixture
def pretrainings(tmp_path, monkeypatch):
    """runs/ with two r3d10 pretrainings (the newer one nested, as make reproduce keeps them)
    and newer best.pt files that are no r3d10 pretraining: another arch's, an evaluation's, and
    the run an --overwrite set aside."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    write_run(runs / "smp-r3d10-synth", "smp", saved=10)
    write_run(runs / "reproduce-synth" / "pretrain-prp-r3d10", "prp", saved=20)
    write_run(runs / "smp-c3d-synth", "smp", arch="c3d", saved=30)
    write_run(runs / "finetune-r3d10-x", "finetune", saved=40)
    write_run(runs / "smp-r3d10-synth" / ".previous", "smp", saved=50)
    return runs


@pytest.mark.parametrize("command", ["probe", "finetune", "retrieve"])
def test_evaluations_default_to_the_latest_pretraining_of_their_arch(
    command, pretrainings, monkeypatch
) -> None:
    configs = record_evaluations(monkeypatch)
    result = runner.invoke(app, [command, "--arch", "r3d10"])
    assert result.exit_code == 0, result.output
    latest = "runs/reproduce-synth/pretrain-prp-r3d10/best.pt"
    assert [cfg.init for cfg in configs] == [latest]
    kind = "probe-speed" if command == "probe" else command
    assert result.output.splitlines() == [
        f"init: {latest} (the latest r3d10 pretraining; --init random for random weights)",
        f"done: runs/{kind}-r3d10-pretrain-prp-r3d10 (accuracy 50.0% +- 10.0 over 8 test items)",
    ]
    # c3d's own pretraining is its latest, though an r3d10 one was saved since
    write_run(pretrainings / "smp-r3d10-later", "smp", saved=35)
    assert runner.invoke(app, [command, "--arch", "c3d"]).exit_code == 0
    assert configs[-1].init == "runs/smp-c3d-synth/best.pt"


def test_init_random_is_honoured_silently(pretrainings, monkeypatch) -> None:
    configs = record_evaluations(monkeypatch)
    result = runner.invoke(app, ["probe", "--arch", "r3d10", "--init", "random"])
    assert result.exit_code == 0, result.output
    assert configs[0].init == "random"
    assert result.output.splitlines() == [
        "done: runs/probe-speed-r3d10-random (accuracy 50.0% +- 10.0 over 8 test items)"
    ]


def test_no_pretraining_to_evaluate_is_one_line(tmp_path, monkeypatch) -> None:
    """Refused before any work (the default dataset is not generated): random weights are
    evaluated only when asked for."""
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "runs" / "smp-c3d-synth", "smp", arch="c3d")
    result = runner.invoke(app, ["probe", "--arch", "r3d10"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        "error: no r3d10 pretraining in runs/: run smp-lite pretrain --arch r3d10 first, or "
        "pass --init random for random weights (or --init PATH, a checkpoint or run folder)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_the_resume_command_names_the_init_it_chose(pretrainings, monkeypatch) -> None:
    """A resume evaluates the same backbone, whatever has been pretrained in between."""

    def stopped(cfg, progress=True):
        raise RunInterrupted(evaluate.eval_out(cfg) / "last.pt")

    monkeypatch.setattr(evaluate, "finetune", stopped)
    result = runner.invoke(app, ["finetune", "--arch", "r3d10", "--epochs", "3"])
    assert result.exit_code == 130, result.output
    command = shlex.split(result.output.strip().splitlines()[-1])
    latest = "runs/reproduce-synth/pretrain-prp-r3d10/best.pt"
    assert command[:4] == ["smp-lite", "finetune", "--init", latest]
    assert command[-3:] == ["--resume", "--out", "runs/finetune-r3d10-pretrain-prp-r3d10"]
    assert "--epochs" in command


def test_a_probe_on_cached_features_defaults_to_their_init(pretrainings, monkeypatch) -> None:
    """Not the latest pretraining: the features are checked to be of their run's init."""
    configs = record_evaluations(monkeypatch)
    write_run(pretrainings / "probe-speed-r3d10-random", "probe-speed", files=("features.pt",))
    args = ["probe", "--arch", "r3d10", "--features", "runs/probe-speed-r3d10-random"]
    result = runner.invoke(app, [*args, "--standardize", "--out", "runs/std"])
    assert result.exit_code == 0, result.output
    assert configs[0].init == "random" and not result.output.startswith("init:")


def test_a_probe_on_cached_features_takes_the_clip_settings_not_given_from_them(
    tmp_path, monkeypatch
) -> None:
    """Only --features and what changes (--standardize): the clips are the source run's; an
    option given stays as given, for probe.features_file to check against the source."""
    monkeypatch.chdir(tmp_path)
    configs = record_evaluations(monkeypatch)
    source = {"task": "probe-speed", "arch": "c3d", "init": "random", "data": "synth:clips"}
    source |= {"preset": "paper", "clip_len": 8, "resize": [32, 40], "crop": 32, "seed": 3}
    source["resume"] = False
    (tmp_path / "probe-a").mkdir()
    write_run_folder(tmp_path / "probe-a", source, 0)
    args = ["probe", "--features", "probe-a", "--standardize", "--out", "std"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, [*args, "--crop", "16", "--overwrite"]).exit_code == 0
    taken, given = configs
    assert (taken.arch, taken.init, taken.data, taken.preset) == (
        "c3d",
        "random",
        "synth:clips",
        "paper",
    )
    assert (taken.clip_len, taken.resize, taken.crop, taken.seed) == (8, (32, 40), 32, 3)
    assert taken.standardize and taken.features == "probe-a"
    assert given.crop == 16 and given.clip_len == 8


@pytest.mark.parametrize(
    "files, chosen",
    [(("best.pt", "last.pt"), "best.pt"), (("last.pt",), "last.pt")],
)
def test_a_run_folder_as_init_means_its_best_then_its_last_checkpoint(
    files, chosen, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    configs = record_evaluations(monkeypatch)
    write_run(tmp_path / "old" / "sup-r3d10", "supervised", files=files)
    result = runner.invoke(app, ["probe", "--arch", "r3d10", "--init", "old/sup-r3d10"])
    assert result.exit_code == 0, result.output
    assert configs[0].init == f"old/sup-r3d10/{chosen}"
    assert result.output.splitlines()[0] == f"init: old/sup-r3d10/{chosen}"
    assert "done: runs/probe-speed-r3d10-sup-r3d10 (" in result.output  # named after the run


@pytest.mark.parametrize(
    "task, message",
    [
        ("", "a folder without best.pt or last.pt, so no backbone to start from: give a "),
        ("retrieve", "a folder without best.pt or last.pt, so no backbone to start from: give "),
        ("probe-speed", "a probe-speed run holds a linear layer, not a backbone: give a "),
    ],
)
def test_a_folder_without_a_backbone_as_init_is_one_line(task, message, tmp_path) -> None:
    folder = tmp_path / "run"
    if task:  # a retrieval saves no checkpoint; a probe's last.pt is its linear layer
        write_run(folder, task, files=("last.pt",) if task == "probe-speed" else ())
    else:
        folder.mkdir()
    for command in ("probe", "finetune", "retrieve"):
        result = runner.invoke(app, [command, "--init", str(folder), "--out", str(tmp_path / "x")])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: --init {folder}: {message}")
        assert len(result.output.splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_pretrain_then_retrieve_just_works(pretrained, ucf_tiny, tmp_path, monkeypatch) -> None:
    """The newcomer's path for real: a pretraining in runs/, then `retrieve` and `report`
    with no more than the clip settings."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(pretrained.parent, tmp_path / "runs" / "smp-r3d10-tiny")
    clips = ["--clip-len", "8", "--resize", "32x40", "--crop", "32", "--test-views", "1"]
    args = ["retrieve", "--arch", "r3d10", "--data", str(ucf_tiny), *clips, "--no-progress"]
    result = runner.invoke(app, [*args, "--workers", "0", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("init: runs/smp-r3d10-tiny/best.pt (the latest r3d10 ")
    out = tmp_path / "runs" / "retrieve-r3d10-smp-r3d10-tiny"
    assert json.loads((out / "config.json").read_text())["init"] == ("runs/smp-r3d10-tiny/best.pt")
    report = runner.invoke(app, ["report", "runs/smp-r3d10-tiny", str(out)])
    assert report.exit_code == 0, report.output
    assert "| smp-r3d10-tiny | `r3d10` | smp | 1 |" in report.output
    assert (
        "| retrieve-r3d10-smp-r3d10-tiny | `r3d10` | retrieve | smp-r3d10-tiny/best.pt | - |"
        in (report.output)
    )
