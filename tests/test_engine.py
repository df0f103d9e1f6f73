from __future__ import annotations

import math
import os
import re
import signal
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import tiny_config, torchrun
from torchmetrics import MeanMetric, MetricCollection

from smp_lite.harness.batches import EpochSampler
from smp_lite.harness.checkpoint import load_checkpoint
from smp_lite.harness.engine import (
    duration,
    format_row,
    load_metrics_state,
    loss_metrics,
    make_loader,
    opening_line,
    phase,
    precise_bn,
)
from smp_lite.harness.folders import read_metrics
from smp_lite.harness.runtime import Runtime
from smp_lite.train import train


def test_precise_bn_sets_the_statistics_of_the_current_weights() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4))
    model[1].running_mean.fill_(5.0)  # stale statistics, as after fast-changing weights
    weights = {k: v.clone() for k, v in model.named_parameters()}
    clips = [torch.rand(2, 3, 4, 6, 6) + i for i in range(3)]  # (B, 3, T, H, W), shifting means
    with torch.no_grad():
        inputs = [model[0](c) for c in clips]  # what the BN layer sees: (2, 4, 4, 6, 6) each
    precise_bn(model, iter(clips), Runtime(torch.device("cpu"), "fp32", False))
    bn = model[1]
    population_mean = torch.cat(inputs).mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(bn.running_mean, population_mean)
    batch_vars = torch.stack([x.var(dim=(0, 2, 3, 4)) for x in inputs])  # unbiased, per batch
    torch.testing.assert_close(bn.running_var, batch_vars.mean(0))
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]), k


@pytest.mark.slow
def test_precise_bn_averages_the_statistics_over_ranks(tmp_path) -> None:
    script = tmp_path / "bn.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import torch
            import torch.distributed as dist
            from smp_lite.harness.engine import precise_bn
            from smp_lite.harness.runtime import Runtime

            dist.init_process_group("gloo")
            rank = dist.get_rank()
            torch.manual_seed(0)  # the same weights on both ranks, as under DDP
            model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4))
            clips = [torch.rand(2, 3, 4, 6, 6) * (1 + rank) + rank for _ in range(2)]
            cpu = torch.device("cpu")
            precise_bn(model, clips, Runtime(cpu, "fp32", False))  # this rank alone
            alone = {k: v.clone() for k, v in model[1].state_dict().items()}
            precise_bn(model, clips, Runtime(cpu, "fp32", False, rank, 2))
            torch.save({"alone": alone, "ranks": model[1].state_dict()}, f"{sys.argv[1]}/{rank}.pt")
            dist.destroy_process_group()
            """
        )
    )
    done = torchrun([str(script), str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    for stat in ("running_mean", "running_var"):
        assert not torch.allclose(r0["alone"][stat], r1["alone"][stat])  # the ranks saw others
        mean = (r0["alone"][stat] + r1["alone"][stat]) / 2
        torch.testing.assert_close(r0["ranks"][stat], mean)
        torch.testing.assert_close(r1["ranks"][stat], mean)


class WorkerState(torch.utils.data.Dataset):
    """Items that report how the worker process serving them is set up."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key) -> dict:
        return {
            "ignores_ctrl_c": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
            "threads": torch.get_num_threads(),
            "pid": os.getpid(),
        }


def test_loader_workers_leave_ctrl_c_to_the_main_process() -> None:
    # Ctrl-C handled as in a terminal, whatever started the tests: a shell's background job
    # starts with SIGINT ignored, which would hide what the workers' start-up does
    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        runtime = Runtime(torch.device("cpu"), "fp32", False)
        sampler = EpochSampler(4, shuffle=False)
        items = list(make_loader(WorkerState(), sampler, 2, 2, runtime, drop_last=False))
        assert all(bool(v) for batch in items for v in batch["ignores_ctrl_c"])
        assert all(int(t) == 1 for batch in items for t in batch["threads"])
        assert all(int(p) != os.getpid() for batch in items for p in batch["pid"])  # not this one
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, started_with)


@pytest.mark.slow
def test_the_loop_with_the_runtime_a_user_gets_and_worker_processes(ucf_tiny, tmp_path) -> None:
    """The defaults: automatic precision and layout (bf16 + channels_last_3d with the conv guard
    on a CPU with bf16 units) and DataLoader worker processes."""
    cfg = tiny_config(
        ucf_tiny, tmp_path / "run", epochs=2, precision="auto", channels_last=None, workers=2
    )
    result = train(cfg, progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("train_loss", "train_recon", "val_loss", "val_acc_rate_c5"):
            assert math.isfinite(row[key]), (key, row)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert result["train_clips"] == rows[-1]["train_clips"] > 0


def test_loss_metrics_are_clip_weighted_means_and_counts() -> None:
    metrics, reference = loss_metrics(["ce"]), MeanMetric().set_dtype(torch.float64)
    for value, n in [(2.0, 4), (1.0, 2), (4.0, 1)]:
        clips = torch.tensor(float(n), dtype=torch.float64)
        metrics["clips"].update(clips)
        metrics["loss"].update(torch.tensor(value, dtype=torch.float64), clips)
        reference.update(value, n)
    assert metrics["clips"].compute() == 7
    assert metrics["loss"].compute() == pytest.approx((8 + 2 + 4) / 7)
    assert metrics["loss"].compute() == pytest.approx(reference.compute().item())
    assert set(metrics) == {"loss", "ce", "clips"}


def test_a_metric_state_saved_by_another_version_counts_from_the_resume(capsys) -> None:
    metrics = MetricCollection(loss_metrics(["ce"]))
    saved = {
        "loss": {"mean_value": torch.tensor(6.0, dtype=torch.float64), "weight": torch.tensor(3.0)},
        "ce": {"tp": torch.tensor(1.0)},  # another metric's states
        "gone": {"total": torch.tensor(1.0)},  # a metric this version no longer has
    }
    load_metrics_state(metrics, saved, Runtime(torch.device("cpu"), "fp32", False))
    assert metrics["loss"].metric_state["mean_value"] == 6  # merged: the run goes on from it
    assert metrics["ce"].metric_state["weight"] == 0  # starts at zero
    out = capsys.readouterr().out
    assert "ce counts from here" in out and "gone counts from here" in out


def test_an_epoch_row_gives_the_chance_level_of_each_heads_last_accuracy() -> None:
    row = {"epoch": 3, "train_loss": 1.3, "val_loss": 1.25, "train_acc_rate_c5": 0.3}
    row |= {"val_acc_rate_c5": 0.41, "clips_per_s": 12.5, "lr": 0.01}
    assert format_row(row, classes=12) == (
        "epoch=3  train_loss=1.3  val_loss=1.25  train_acc_rate_c5=0.3  "
        "val_acc_rate_c5=0.41 (chance 0.25)  clips_per_s=12.5"
    )
    # a probe's epoch on cached features runs at tens of thousands of clips a second
    assert format_row({"epoch": 2, "clips_per_s": 35204.37}) == "epoch=2  clips_per_s=35204.4"
    # no validation (fine-tuning): the training accuracy; an action head: 1 / classes
    finetune = {"epoch": 1, "train_loss": 4.1, "train_acc_action": 0.05}
    assert format_row(finetune, classes=101).endswith("train_acc_action=0.05 (chance 0.0099)")
    assert (
        format_row({"epoch": 1, "val_acc_speed": 0.5}) == "epoch=1  val_acc_speed=0.5 (chance 0.25)"
    )
    # a probe evaluates on the test clips each epoch: its row says so
    probe = {"epoch": 1, "train_loss": 1.2, "val_loss": 1.3, "val_acc_speed": 0.5}
    assert format_row(probe, held_out="test") == (
        "epoch=1  train_loss=1.2  test_loss=1.3  test_acc_speed=0.5 (chance 0.25)"
    )


def test_the_opening_line_says_what_where_and_how() -> None:
    probe = {"task": "probe-speed", "arch": "r3d18", "init": "runs/smp/best.pt"}
    probe |= {"data": "data/synth", "preset": "quick", "clip_len": 16, "crop": 48}
    probe |= {"batch_size": 32, "epochs": 30}
    ranks = Runtime(torch.device("cuda", 0), "bf16", True, rank=0, world=2, compile=True)
    assert opening_line(probe, ranks, Path("runs/p")) == (
        "probe speed r3d18 from runs/smp/best.pt on data/synth (quick preset): 16x48x48 clips, "
        "batch 32, 30 epochs, 2x cuda bf16 compiled -> runs/p"
    )
    retrieve = {**probe, "task": "retrieve", "init": "random"}
    del retrieve["batch_size"], retrieve["epochs"]
    cpu = Runtime(torch.device("cpu"), "fp32", False)
    assert opening_line(retrieve, cpu, Path("runs/r")) == (
        "retrieve r3d18 with random weights on data/synth (quick preset): 16x48x48 clips, "
        "cpu fp32 -> runs/r"
    )


CLIPS_IN = r"[\d,]+ clips in [\d.]+ s \([\d,.]+ clips/s\)"  # a phase's line, after its name


def test_a_long_phase_is_a_bar_on_a_terminal_and_one_line_in_a_log(capsys) -> None:
    rank0, rank1 = (Runtime(torch.device("cpu"), "fp32", False, rank, world=2) for rank in (0, 1))
    batches = [{"label": torch.zeros(3)}, {"label": torch.zeros(2)}]
    # without bars: one line once done; sharded over 2 ranks, this one's clips count twice
    passed = list(phase(batches, "validation (epoch 1)", 5, False, rank0, sharded=True))
    assert passed == batches
    out, err = capsys.readouterr()
    assert re.fullmatch(r"validation \(epoch 1\): 10 clips in 0.0 s \([\d,.]+ clips/s\)\n", out)
    assert err == ""
    # with bars: a bar counting clips on stderr, no line
    list(phase([torch.zeros(4, 3), torch.zeros(4, 3)], "BatchNorm statistics", 8, True, rank0))
    out, err = capsys.readouterr()
    assert out == "" and "BatchNorm statistics:" in err and "clip/s" in err
    # other ranks, and the quiet phases of short epochs, show nothing
    list(phase(batches, "validation", 5, False, rank1))
    list(phase(batches, "validation", 5, True, rank1))
    list(phase(batches, "validation", 5, False, rank0, quiet=True))
    assert capsys.readouterr() == ("", "")


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (0.42, 41.4, 422.3, 7500)] == [
        "0.4 s",
        "41 s",
        "7 min 2 s",
        "2 h 5 min",
    ]


@pytest.mark.slow
def test_without_bars_precise_bn_and_validation_each_print_one_line(
    ucf_tiny, tmp_path, capsys
) -> None:
    """What a --no-progress log shows of an epoch: the two phases after its training, one line
    each, then its row; no bars."""
    train(tiny_config(ucf_tiny, tmp_path / "run", epochs=1, precise_bn=2), progress=False)
    out, err = capsys.readouterr()
    lines = out.splitlines()[1:]  # after the opening line
    assert len(lines) == 3, out
    assert re.fullmatch(rf"BatchNorm statistics \(epoch 1\): {CLIPS_IN}", lines[0])
    # precise_bn=2, but 6 training videos fill one whole batch of 4
    assert lines[0].startswith("BatchNorm statistics (epoch 1): 4 clips in ")
    assert re.fullmatch(rf"validation \(epoch 1\): {CLIPS_IN}", lines[1])
    assert lines[2].startswith("epoch=1  train_loss=")
    assert "clip/s" not in err and "step/s" not in err
