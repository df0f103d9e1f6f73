from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from smp_lite.cli import app
from smp_lite.errors import TrainError
from smp_lite.evaluate import paired_bootstrap_std
from smp_lite.harness.folders import append_metrics, read_metrics, write_results, write_run_folder
from smp_lite.tools.report import (
    EVAL_LEGEND,
    PRETRAIN_LEGEND,
    plot_curves,
    plot_speed_confusions,
    plot_table1,
    pretrain_table,
    retrieval_table,
    table1,
    table2,
)
from smp_lite.train import make_config, train


@pytest.fixture(scope="module")
def two_runs(ucf_tiny, tmp_path_factory):
    """A real 3-epoch SMP run and a 2-epoch supervised one on the tiny dataset."""
    root = tmp_path_factory.mktemp("runs")
    tiny = dict(
        arch="r3d10", data=str(ucf_tiny), batch_size=4, clip_len=8, resize=(32, 40), crop=32,
        workers=0, limit_batches=2, val_fraction=0.25, precision="fp32",
    )  # fmt: skip
    train(make_config("smp", "quick", out=str(root / "smp"), epochs=3, **tiny), progress=False)
    train(make_config("supervised", "quick", out=str(root / "sup"), epochs=2, **tiny), False)
    return root / "smp", root / "sup"


@pytest.mark.slow
def test_table_reports_best_pt_and_last_epoch(two_runs) -> None:
    smp, sup = two_runs
    text = pretrain_table([smp, sup])
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 4 and table[0].startswith("| run | arch | task |")
    assert "mean of last 3 smooths" in text  # each number explained under the table
    rows = read_metrics(smp)
    best = min(rows, key=lambda r: r["val_loss"])
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    assert cells[:4] == ["smp", "`r3d10`", "smp", "3"]
    assert cells[4] == f"{best['epoch']}: {100 * best['val_acc_rate_c5']:.1f}%"
    assert cells[5] == f"{100 * rows[-1]['val_acc_rate_c5']:.1f}%"
    mean = sum(r["val_acc_rate_c5"] for r in rows) / 3
    assert cells[6] == f"{100 * mean:.1f}%"
    per_rate = [f"{100 * rows[-1][f'val_acc_at_rate_{r}']:.1f}%" for r in (1, 2, 4, 8)]
    assert cells[8] == " / ".join(per_rate)
    sup_cells = [c.strip() for c in table[3].split("|")[1:-1]]
    last_sup = read_metrics(sup)[-1]
    assert sup_cells[2] == "supervised" and sup_cells[7] == sup_cells[8] == "-"  # no rate heads
    assert sup_cells[5] == f"{100 * last_sup['val_acc_action']:.1f}%"


@pytest.mark.slow
def test_curves_are_written_as_png(two_runs, tmp_path) -> None:
    out = plot_curves(list(two_runs), tmp_path / "figs" / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    # a probe's epochs are not a pretraining's: an axis of its own, beside the other
    probe = shutil.copytree(two_runs[0], tmp_path / "probe")
    config = json.loads((probe / "config.json").read_text())
    (probe / "config.json").write_text(json.dumps({**config, "task": "probe"}))
    both = plot_curves([*two_runs, probe], tmp_path / "both.png")
    widths = [Image.open(png).size[0] for png in (out, both)]
    assert widths == [700, 1400]


@pytest.mark.slow
def test_a_stopped_run_says_how_many_of_its_epochs_it_did(two_runs, tmp_path) -> None:
    stopped = shutil.copytree(two_runs[0], tmp_path / "stopped")
    config = json.loads((stopped / "config.json").read_text())
    (stopped / "config.json").write_text(json.dumps({**config, "epochs": 10}))
    rows = [line for line in pretrain_table([stopped, two_runs[0]]).splitlines()]
    assert "| 3 of 10 (not finished) |" in rows[2] and "| smp | 3 |" in rows[3]


@pytest.mark.slow
def test_report_command_and_a_folder_that_is_no_run(two_runs, tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["report", *map(str, two_runs), "--table", str(tmp_path / "t.md")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t.md").read_text().strip() == pretrain_table(list(two_runs))
    bad = runner.invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 1
    assert bad.output.strip() == f"error: {tmp_path} is not a run folder: it has no " + (
        "metrics.jsonl and config.json"
    )
    with pytest.raises(TrainError, match="not a run folder"):
        pretrain_table([tmp_path / "missing"])


@pytest.mark.slow
def test_report_of_a_killed_run_and_of_torn_files(two_runs, tmp_path) -> None:
    runner = CliRunner()
    run = tmp_path / "smp"
    shutil.copytree(two_runs[0], run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "train_loss": 0.')  # killed while writing a row
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "| smp | `r3d10` | smp | 3 |" in result.output  # the three whole rows
    (run / "config.json").write_text('{"arch": "r3d10", "ta')
    bad = runner.invoke(app, ["report", str(run)])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
    assert bad.output.startswith(f"error: {run / 'config.json'} is not readable JSON: ")


def hand_run(folder, task: str, rows=(), results=None, init="random"):
    """A run folder as smp-lite writes one, by hand: config.json, metrics rows, results.json."""
    folder.mkdir(parents=True)
    write_run_folder(folder, {"arch": "r3d10", "task": task, "init": init, "resume": False}, 0)
    for row in rows:
        append_metrics(folder, row)
    if results is not None:
        write_results(folder, results)
    return folder


def evaluation_runs(root) -> list:
    """A finished speed probe, fine-tuning and retrieval, and an action probe still running,
    with the rows and results.json each writes."""
    init = "runs/smp-r3d10-synth/best.pt"
    probe_rows = [
        {"epoch": e, "train_loss": 1.0, "train_acc_speed": t, "val_loss": 1.1, "val_acc_speed": v}
        for e, t, v in ((1, 0.4, 0.35), (2, 0.5, 0.45))
    ]
    tune_rows = [
        {"epoch": e, "train_loss": 2.0, "train_acc_action": t} for e, t in ((1, 0.2), (2, 0.3))
    ]
    accuracy = {"accuracy": 0.45, "accuracy_std": 0.031, "items": 96, "per_class": {}}
    top_k = {"top_k": {"1": 0.25, "5": 0.5}, "top_k_std": {"1": 0.03, "5": 0.04}, "queries": 12}
    return [
        hand_run(
            root / "probe", "probe-speed", probe_rows, {"kind": "probe-speed", **accuracy}, init
        ),
        hand_run(
            root / "tune",
            "finetune",
            tune_rows,
            {"kind": "finetune", **accuracy, "accuracy": 0.25, "accuracy_std": 0.05, "items": 12},
            init,
        ),  # fmt: skip
        hand_run(root / "retrieval", "retrieve", results={"kind": "retrieve", **top_k}),
        hand_run(root / "running", "probe-action", tune_rows[:1]),
    ]


@pytest.mark.slow
def test_report_of_every_kind_of_run(two_runs, tmp_path) -> None:
    """Pretraining and evaluation runs in one report: a table each, a note for what a run
    cannot show, the curves of every run with epochs."""
    runs = [two_runs[0], *evaluation_runs(tmp_path / "runs")]
    table, png = tmp_path / "t.md", tmp_path / "curves.png"
    args = ["report", *map(str, runs), "--table", str(table), "--figure", str(png)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    tables = pretrain_table(two_runs[:1]) + "\n\n" + "\n".join([
        "| run | arch | kind | init | epochs | last train acc | last test-clip acc | result (%) |",
        "|---|---|---|---|---|---|---|---|",
        "| probe | `r3d10` | probe-speed | smp-r3d10-synth/best.pt | 2 | 50.0% | 45.0% | "
        "45.0 ± 3.1 (96 test items) |",
        "| tune | `r3d10` | finetune | smp-r3d10-synth/best.pt | 2 | 30.0% | - | "
        "25.0 ± 5.0 (12 test items) |",
        "| retrieval | `r3d10` | retrieve | random | - | - | - | "
        "top-1 25.0 ± 3.0, top-5 50.0 ± 4.0 |",
        "| running | `r3d10` | probe-action | random | 1 | 20.0% | - | not finished |",
        "",
        EVAL_LEGEND,
    ])  # fmt: skip
    assert result.output == tables + "\n" + "\n".join([
        "note: tune: fine-tuning validates on nothing: per epoch, training accuracy only; the "
        "test videos' is the result",
        "note: retrieval: retrieval trains nothing: no epochs, no curve",
        "note: running: no results.json yet (running, stopped or failed)",
        f"figure: {png}",
    ]) + "\n"  # fmt: skip
    assert table.read_text() == tables + "\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_evaluations_alone_and_of_a_pretraining_without_validation(tmp_path) -> None:
    runs = evaluation_runs(tmp_path / "runs")
    only = CliRunner().invoke(app, ["report", str(runs[2])])
    assert only.exit_code == 0, only.output
    assert only.output.splitlines()[0].startswith("| run | arch | kind | init |")
    rows = [{"epoch": 1, "train_loss": 1.5, "train_acc_rate_c5": 0.3, "lr": 0.1}]
    blind = hand_run(tmp_path / "blind", "smp", rows)
    result = CliRunner().invoke(app, ["report", str(blind), "--figure", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[2] == "| blind | `r3d10` | smp | 1 | 1: - | - | - | - | - | 30.0% |"
    assert lines[3:5] == ["", PRETRAIN_LEGEND]
    assert lines[5] == "note: blind: no held-out accuracy (run with --val-fraction 0)"


NOT_SMP_LITE = "config.json is not a smp-lite run's: it names no arch and task"
RETRIEVAL = '{"arch": "c3d", "task": "retrieve"}'


@pytest.mark.parametrize(
    "files, message",
    [
        ({"config.json": '{"epochs": 3}', "metrics.jsonl": ""}, NOT_SMP_LITE),
        ({"metrics.jsonl": '{"epoch": 1}'}, "is not a run folder: it has no metrics.jsonl and "),
        ({"config.json": '{"arch": "c3d", "task": "finetune"}'}, "has no finished epoch yet"),
        ({"config.json": RETRIEVAL}, "has no results.json yet"),
        ({"config.json": RETRIEVAL, "results.json": "[1]"}, "no accuracy or top_k"),
    ],
)
def test_report_of_a_broken_run_is_one_line(files, message, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name, text in files.items():
        (run / name).write_text(text)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 1, result.output
    assert len(result.output.splitlines()) == 1 and message in result.output, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def probe_numbers(accuracy: float, std: float) -> dict:
    per_rate = {"1": accuracy, "2": accuracy, "4": accuracy, "8": accuracy}
    return {"accuracy": accuracy, "accuracy_std": std, "per_class": per_rate,
            "confusion": [[3, 1, 0, 0], [1, 3, 0, 0], [0, 0, 4, 0], [0, 0, 1, 3]]}  # fmt: skip


def test_tables_of_a_pipeline_still_running(tmp_path) -> None:
    """Numbers as the seed prints them, and what has not run yet said so."""
    summary = {
        "profile": "synth",
        "data": "data/synth",
        "device": "CPU, 2 cores",
        "seconds": 1500.0,
        "archs": ["c3d", "r3d10"],
        "probe-speed": {
            "c3d": {"random": probe_numbers(0.425, 0.012), "supervised": probe_numbers(0.5, 0.02)}
        },
        "probe-speed-std": {"c3d": {"random": probe_numbers(0.5, 0.01)}},
        "probe-action": {},
        "finetune": {"r3d10": {"smp": probe_numbers(0.3, 0.05)}},
        "retrieve": {
            "c3d": {"prp": {"top_k": {"1": 0.25, "5": 0.5}, "top_k_std": {"1": 0.03, "5": 0.04}}}
        },
    }
    text = table1(summary)
    assert "| Initialisation | C3D (`c3d`) | R3D-10 (`r3d10`) |" in text
    assert "| Random | 42.5 ± 1.2 | not run yet |" in text
    assert "| Fully-supervised | 50.0 ± 2.0 (+7.5) | not run yet |" in text
    assert "| Fully-supervised | 48.83 (+6.35) | 45.97 (+5.08) | 51.27 (+9.74) |" in text
    assert "| Random | 42 / 42 / 42 / 42 | not run yet |" in text  # per rate, 1 / 2 / 4 / 8
    standardised = text.split("cached features standardised")[1].split("BatchNorm statistics")[0]
    assert "| Random | 50.0 ± 1.0 | not run yet |" in standardised
    assert "| Fully-supervised | not run yet | not run yet |" in standardised
    # a summary from before motion energy and BatchNorm re-estimation: those not run yet
    assert "| Motion energy (no network) | not run yet | not run yet |" in text
    refit = text.split("BatchNorm statistics re-estimated on training clips (weights frozen)")[1]
    assert "| Random | not run yet | not run yet |" in refit
    assert "took 25 min" in text
    # no random-init row to compare with: no difference printed
    assert "| SMP | not run yet | 30.0 ± 5.0 |" in table2(summary)
    retrieval = retrieval_table(summary)
    assert "| PRP | 25.0 ± 3.0 | 50.0 ± 4.0 |" in retrieval and "| SMP | not run yet |" in retrieval
    assert "## R3D-10 (`r3d10`)\n\nNot run yet." in retrieval
    plot_table1(summary, tmp_path / "t1.png")
    plot_speed_confusions(summary, tmp_path / "confusion.png")
    assert (tmp_path / "t1.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "confusion.png").stat().st_size > 1000


def with_items(numbers: dict, correct: list[int]) -> dict:
    """`numbers` with each test item's correctness, video and group, as results.json has them."""
    video = [i // 4 for i in range(len(correct))]  # 4 clips a video, as the speed probe's
    group = [f"g{v // 3}" for v in video]  # 3 videos a group
    accuracy = sum(correct) / len(correct)
    return numbers | {"accuracy": accuracy, "correct": correct, "video": video, "group": group}


def test_differences_to_random_get_a_paired_spread(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    right = [(torch.rand(80, generator=g) < p).int().tolist() for p in (0.3, 0.5, 0.6, 0.4)]
    random, smp, energy, other = (with_items(probe_numbers(0, 0.02), c) for c in right)
    summary = {
        "profile": "synth", "data": "data/synth", "device": "CPU, 2 cores", "seconds": 60.0,
        "archs": ["c3d", "r3d10"],
        "probe-speed": {"c3d": {"random": random, "smp": smp},
                        "r3d10": {"random": other, "prp": probe_numbers(0.5, 0.02)}},
        "probe-speed-energy": energy,
        "probe-speed-bn": {"c3d": {"random": smp, "smp": random}},
    }  # fmt: skip
    text = table1(summary)
    tensors = [torch.tensor(x) for x in (smp["correct"], random["correct"], random["video"])]
    spread = 100 * paired_bootstrap_std(*tensors, random["group"], seed=0)
    diff = 100 * (smp["accuracy"] - random["accuracy"])
    raw = text.split("cached features standardised")[0]
    assert f"| SMP | {100 * smp['accuracy']:.1f} ± 2.0 ({diff:+.1f} ± {spread:.1f}) |" in raw
    # r3d10's PRP result predates per-item correctness: its difference has no spread
    assert f"| PRP | not run yet | 50.0 ± 2.0 ({50 - 100 * other['accuracy']:+.1f}) |" in raw
    # motion energy: one result in every column, compared with each column's Random
    row = next(line for line in raw.splitlines() if line.startswith("| Motion energy"))
    energy_cells = [c.strip() for c in row.split("|")[2:-1]]
    assert len(energy_cells) == 2
    for cell, base in zip(energy_cells, (random, other), strict=True):
        assert cell.startswith(f"{100 * energy['accuracy']:.1f} ± 2.0 (")
        assert f"({100 * (energy['accuracy'] - base['accuracy']):+.1f} ± " in cell
    refit = text.split("BatchNorm statistics re-estimated on training clips (weights frozen)")[1]
    assert f"| SMP | {100 * random['accuracy']:.1f} ± 2.0 ({-diff:+.1f} ± {spread:.1f}) |" in refit
    assert "| Initialisation | C3D (`c3d`) | R3D-10 (`r3d10`) |" in refit
    # a profile that re-estimates BatchNorm on some backbones only: their columns alone
    only_c3d = table1(summary | {"refit_bn_archs": ["c3d"]}).split("(weights frozen)")[1]
    assert "| Initialisation | C3D (`c3d`) |\n|---|---|\n" in only_c3d
    none_here = table1(summary | {"refit_bn_archs": []}).split("normalised activations:")[1]
    assert none_here.strip().split("\n\n")[0] == (
        "Not run: the profile re-estimates BatchNorm on none of these backbones."
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty panel once warned of a singular x range
        plot_table1(summary | {"refit_bn_archs": []}, tmp_path / "none.png")
    # retrieval: each query's hit at k, paired over the same queries
    as_retrieval = {
        init: {"top_k": {"1": r["accuracy"]}, "top_k_std": {"1": 0.02}, "hits": {"1": r["correct"]},
               "video": r["video"], "group": r["group"]}
        for init, r in (("random", random), ("smp", smp))
    }  # fmt: skip
    retrieval = retrieval_table(summary | {"retrieve": {"c3d": as_retrieval}})
    assert f"| Random | {100 * random['accuracy']:.1f} ± 2.0 |" in retrieval
    assert f"| SMP | {100 * smp['accuracy']:.1f} ± 2.0 ({diff:+.1f} ± {spread:.1f}) |" in retrieval
    plot_table1(summary, tmp_path / "t1.png")
    assert (tmp_path / "t1.png").read_bytes()[:4] == b"\x89PNG"
