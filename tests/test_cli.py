from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from smp_lite.cli import app
from smp_lite.train import load_checkpoint, read_metrics

runner = CliRunner()


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # rich may colour the help


def test_top_level_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "pretrain" in result.output and "data" in result.output


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
            ],
        ),
        (["data", "synth"], ["--out", "--preset", "--seed", "--workers", "--figure"]),
    ],
)
def test_every_option_is_explained(command, options) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = plain(result.output)
    for option in options:
        assert option in text, option


def test_pretrain_end_to_end(ucf_tiny, tmp_path) -> None:
    out = tmp_path / "run"
    args = [
        "pretrain",
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
        "--clip-len",
        "8",
        "--resize",
        "32x40",
        "--crop",
        "32",
        "--workers",
        "0",
        "--limit-batches",
        "2",
        "--precision",
        "fp32",
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "done:" in result.output
    assert len(read_metrics(out)) == 2
    assert load_checkpoint(out / "best.pt")["arch"] == "c3d"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "vgg16"], "unknown architecture 'vgg16'"),
        (["--task", "jigsaw"], "unknown task 'jigsaw'"),
        (["--epochs", "0"], "epochs must be positive"),
        (["--crop", "50"], "divisible by 16"),
        (["--data", "/no/such/folder"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message, tmp_path) -> None:
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "r"), *args])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_data_synth_tiny(tmp_path) -> None:
    out = tmp_path / "synth"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert (out / "classInd.txt").is_file() and (out / "trainlist01.txt").is_file()
    bad = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--preset", "huge"])
    assert bad.exit_code != 0 and "huge" in bad.output
