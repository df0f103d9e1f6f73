from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import time
from dataclasses import fields, replace
from pathlib import Path
from threading import Event

import pytest
import torch
from helpers import TORCHRUN_ENV, tiny_config, tiny_pretrain_args, torchrun, torchrun_command
from torchmetrics.classification import MulticlassAccuracy
from video_files import write_ucf_layout

import smp_lite.tools.synth
import smp_lite.train
from smp_lite.config import (
    KEPT_ON_RESUME,
    RATES,
    FinetuneConfig,
    ProbeConfig,
    TrainConfig,
)
from smp_lite.data import VideoDataset
from smp_lite.errors import ConfigError, DataError, RunInterrupted, TrainError
from smp_lite.harness.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from smp_lite.harness.engine import evaluate_batches, metrics_row
from smp_lite.harness.folders import read_metrics, run_folder
from smp_lite.harness.launch import make_loaders
from smp_lite.harness.runtime import Runtime
from smp_lite.index import load_index, split_by_group
from smp_lite.masks import motion_mask_cam
from smp_lite.models import NUM_RATES, MotionNet
from smp_lite.train import (
    AccuracyPerClass,
    build_model,
    default_out,
    make_config,
    make_optimizer,
    make_scheduler,
    make_step,
    motion_loss,
    pretraining_datasets,
    task_metrics,
    train,
)


def test_accuracy_per_rate_is_torchmetrics_per_class_accuracy() -> None:
    ours, reference = AccuracyPerClass(4), MulticlassAccuracy(4, average="none")
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        logits, labels = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
        ours.update(logits, labels)
        reference.update(logits, labels)
    assert torch.allclose(ours.compute(), reference.compute())  # class 3 unseen: 0 in both
    assert ours.compute()[3] == 0 and ours.compute()[:3].min() > 0


def test_rate_heads_learn_ten_times_faster() -> None:
    cfg = make_config("smp", "quick", arch="r3d10", lr=0.01)
    model = MotionNet("r3d10", mg=True)
    groups = make_optimizer(model, cfg).param_groups
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    assert len(groups[1]["params"]) == 8  # weight and bias of four rate-head Linear layers
    same = make_config("smp", "quick", arch="r3d10", lr=0.01, head_lr_scale=1.0)
    assert [g["lr"] for g in make_optimizer(model, same).param_groups] == [0.01, 0.01]


def test_presets_and_overrides() -> None:
    paper = make_config("prp", data="ucf101:/somewhere")
    assert (paper.preset, paper.epochs, paper.batch_size, paper.crop) == ("paper", 300, 8, 112)
    sup = make_config("supervised", "paper")
    assert (sup.batch_size, sup.lr, sup.schedule, sup.warmup_epochs) == (32, 0.1, "cosine", 5)
    quick = make_config("smp", data="synth:data/synth", epochs=2)
    assert quick.preset == "quick" and quick.epochs == 2


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(arch="vgg"), "unknown architecture"),
        (dict(epochs=0), "epochs must be positive"),
        (dict(batch_size=-1), "batch size must be positive"),
        (dict(crop=50), "divisible by 16"),
        (dict(lam_schedule="cubic"), "unknown lambda schedule"),
    ],
)
def test_bad_settings_are_refused(kw, message) -> None:
    with pytest.raises(ConfigError, match=message):  # a ValueError too: the CLI exits 2
        make_config("smp", "quick", **kw)
    with pytest.raises(ConfigError, match="unknown task"):
        make_config("jigsaw")


@pytest.mark.slow
def test_smp_run_writes_the_run_and_its_loss_goes_down(ucf_tiny, tmp_path) -> None:
    cfg = tiny_config(ucf_tiny, tmp_path / "run", epochs=5, lr=0.05)
    result = train(cfg, progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for key in (
        "val_loss",
        "train_acc_rate_c5",
        "train_acc_rate_c2",
        "val_acc_rate_c5",
        "lr",
        "clips_per_s",
        "train_recon",
        "train_ce_mg",
        "skipped_videos",
        "val_views_dropped",
        *(f"val_acc_at_rate_{rate}" for rate in RATES),
    ):
        assert key in rows[0], key
    # per-rate accuracy: 2 held-out videos at each rate, so each is 0, 0.5 or 1, and their mean
    # is the c5 head's accuracy over the balanced validation set
    per_rate = [rows[-1][f"val_acc_at_rate_{rate}"] for rate in RATES]
    assert all(a in (0.0, 0.5, 1.0) for a in per_rate)
    assert sum(per_rate) / 4 == pytest.approx(rows[-1]["val_acc_rate_c5"])
    assert rows[0]["val_views_dropped"] == 0  # 140-frame videos: every rate fits
    _, val_videos = split_by_group(load_index(str(ucf_tiny)).train, cfg.val_fraction, cfg.seed)
    assert rows[0]["val_clips"] == 4 * len(val_videos) == 8  # every held-out video at every rate
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "smp" and config["version"] and config["crop"] == 32
    assert config["train_crop"] == "random" and config["lr"] == cfg.lr
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 5 and state["arch"] == "r3d10" and state["task"] == "smp"
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["best_val"] == pytest.approx(min(r["val_loss"] for r in rows))
    assert "optimizer" in state and "optimizer" not in best  # best.pt: what evaluation reads
    assert result["best_val"] == pytest.approx(best["best_val"])


@pytest.mark.slow
def test_same_seed_same_numbers(ucf_tiny, tmp_path) -> None:
    def run(name: str, seed: int) -> list[dict]:
        train(
            tiny_config(ucf_tiny, tmp_path / name, task="prp", epochs=2, seed=seed), progress=False
        )
        rows = read_metrics(tmp_path / name)
        return [{k: v for k, v in r.items() if k != "clips_per_s"} for r in rows]

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert a == b
    assert a != c


@pytest.mark.slow
def test_repeated_sampling_makes_an_epoch_pass_each_video_that_many_times(ucf_tiny, tmp_path):
    steps = {}
    for k in (1, 2):
        cfg = tiny_config(ucf_tiny, tmp_path / f"k{k}", task="prp", epochs=1, limit_batches=0)
        train(replace(cfg, clips_per_video=k, save_every=0), progress=False)
        steps[k] = load_checkpoint(tmp_path / f"k{k}" / "last.pt")["step"]
    assert steps[1] > 0 and steps[2] in (2 * steps[1], 2 * steps[1] + 1)  # drop_last


@pytest.mark.slow
def test_precise_bn_changes_only_the_bn_statistics_of_a_run(ucf_tiny, tmp_path) -> None:
    for name, batches in (("running", 0), ("precise", 2)):
        cfg = tiny_config(ucf_tiny, tmp_path / name, task="prp", epochs=1, precise_bn=batches)
        train(cfg, progress=False)
    running = load_checkpoint(tmp_path / "running" / "last.pt")
    precise = load_checkpoint(tmp_path / "precise" / "last.pt")
    stats = [k for k in running["model"] if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(running["model"][k], precise["model"][k]) for k in stats)
    for k, v in running["model"].items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, precise["model"][k]), k  # training itself is unchanged
    assert running["metrics"]["train_loss"] == precise["metrics"]["train_loss"]
    assert running["metrics"]["val_loss"] != precise["metrics"]["val_loss"]


@pytest.mark.slow
def test_pretraining_under_torchrun_with_two_processes(ucf_tiny, tmp_path) -> None:
    """Real DistributedDataParallel over gloo: metrics count the clips of both ranks."""
    done = torchrun(tiny_pretrain_args(ucf_tiny, tmp_path / "run", "--epochs", "2"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done:") == 1  # rank 0 speaks for both
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2]
    steps = rows[0]["step"]
    assert steps >= 1 and rows[0]["train_clips"] == 2 * 2 * steps  # 2 ranks x batch 2 x steps
    assert rows[0]["val_clips"] == 8  # both ranks' halves of the held-out set, at every rate
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 2 * steps


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_resume_goes_on(ucf_tiny, tmp_path):
    out = tmp_path / "run"
    args = tiny_pretrain_args(ucf_tiny, out, "--epochs", "40", "--save-every", "1")
    running = subprocess.Popen(
        torchrun_command(args), cwd=tmp_path, env=TORCHRUN_ENV, text=True, stderr=subprocess.PIPE
    )
    for _ in range(1200):  # an epoch is done: the ranks are training, their handlers are set
        if (out / "metrics.jsonl").is_file() or running.poll() is not None:
            break
        time.sleep(0.1)
    running.send_signal(signal.SIGTERM)  # what a cluster's scheduler sends
    stderr = running.communicate(timeout=120)[1]
    assert running.returncode != 0
    assert stderr.count("to go on from there, run:") == 1, stderr[-3000:]  # rank 0's
    stopped = load_checkpoint(out / "last.pt")
    assert 1 <= stopped["epoch"] < 40
    epochs = str(stopped["epoch"] + 1)
    resumed = torchrun(tiny_pretrain_args(ucf_tiny, out, "--epochs", epochs, "--resume"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(out)] == list(range(1, stopped["epoch"] + 2))


def test_supervised_run(ucf_tiny, tmp_path) -> None:
    result = train(
        tiny_config(ucf_tiny, tmp_path / "sup", task="supervised", epochs=1), progress=False
    )
    assert "train_acc_action" in result and "val_loss" in result
    assert load_checkpoint(tmp_path / "sup" / "best.pt")["task"] == "supervised"


@pytest.mark.slow
def test_a_compiled_run_trains_as_the_eager_one_and_saves_a_plain_checkpoint(
    ucf_tiny, tmp_path
) -> None:
    rows = {}
    for compiled in (True, False):
        out = tmp_path / str(compiled)
        cfg = tiny_config(ucf_tiny, out, task="supervised", epochs=1, compile=compiled)
        rows[compiled] = train(cfg, progress=False)
    for key in ("train_loss", "val_loss", "train_acc_action"):
        assert rows[True][key] == pytest.approx(rows[False][key], rel=1e-4, abs=1e-6)
    compiled, eager = (load_checkpoint(tmp_path / str(c) / "last.pt")["model"] for c in rows)
    assert compiled.keys() == eager.keys()  # no torch.compile prefix: one checkpoint format


def test_a_model_torch_compile_cannot_compile_is_one_line_naming_no_compile(
    ucf_tiny, tmp_path, monkeypatch
) -> None:
    def no_compiler(graph, inputs):
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=no_compiler))
    cfg = tiny_config(ucf_tiny, tmp_path / "run", task="supervised", epochs=1, compile=True)
    with pytest.raises(
        TrainError, match=r"compile failed \(RuntimeError: no C compiler.*no-compile"
    ):
        train(cfg, progress=False)


@pytest.mark.slow
def test_a_second_run_in_the_same_folder_is_refused(ucf_tiny, tmp_path) -> None:
    train(tiny_config(ucf_tiny, tmp_path / "r", epochs=1), progress=False)
    with pytest.raises(TrainError, match="already holds a run"):
        train(tiny_config(ucf_tiny, tmp_path / "r", epochs=1), progress=False)
    train(tiny_config(ucf_tiny, tmp_path / "r", epochs=1, overwrite=True), progress=False)
    assert len(read_metrics(tmp_path / "r")) == 1


# ---------------------------------------------------------------------------------------------
# Reliability (docs/reliability.md)


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    ucf_tiny, tmp_path, monkeypatch
):
    calls, motion_step = [], smp_lite.train.motion_step

    def nan_at_step_3(model, batch, lam, weights):
        calls.extend([1] if model.training else [])  # count training steps only
        loss, terms, heads = motion_step(model, batch, lam, weights)
        return (loss * math.nan if len(calls) == 3 else loss), terms, heads

    monkeypatch.setattr(smp_lite.train, "motion_step", nan_at_step_3)
    cfg = tiny_config(ucf_tiny, tmp_path / "run", batch_size=2, limit_batches=0, save_every=1)
    with pytest.raises(TrainError, match=r"loss became nan at step 3 \(epoch 1, batch 3\)"):
        train(cfg, progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")  # saved after step 2, mid-epoch
    assert (state["step"], state["epoch"], state["batches_done"]) == (2, 0, 2)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.slow
def test_sigterm_stops_after_the_step_with_last_pt_saved(ucf_tiny, tmp_path, monkeypatch):
    calls, motion_step = [], smp_lite.train.motion_step

    def terminated_in_step_2(model, batch, lam, weights):
        calls.extend([1] if model.training else [])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. a cluster's time limit
        return motion_step(model, batch, lam, weights)

    monkeypatch.setattr(smp_lite.train, "motion_step", terminated_in_step_2)
    cfg = tiny_config(ucf_tiny, tmp_path / "run", batch_size=2, limit_batches=0, save_every=0)
    with pytest.raises(RunInterrupted, match="interrupted: saved .*last.pt"):
        train(cfg, progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")  # step 2 finished, then saved
    assert (state["step"], state["epoch"], state["batches_done"]) == (2, 0, 2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


# what the saved optimiser, scheduler or run would silently put back, or what the run is
MUST_KEEP = ("lr", "weight_decay", "momentum", "head_lr_scale", "plateau_patience",
             "lr_step_epoch", "init", "init_from", "standardize", "refit_bn", "batch_size",
             "arch", "task", "seed", "crop", "clip_len", "lam_schedule", "schedule")  # fmt: skip
SETTINGS = sorted({f.name for c in (TrainConfig, ProbeConfig, FinetuneConfig) for f in fields(c)})


@pytest.mark.parametrize("setting", SETTINGS)
def test_resume_refuses_or_applies_each_changed_setting(setting) -> None:
    """Every setting is declared kept (a change is refused in one line) or applied by a resume;
    none is silently ignored. The optimiser's and scheduler's settings are kept."""
    saved = {"arch": "c3d", "task": "smp", setting: "before"}
    state = {"arch": saved["arch"], "task": saved["task"], "config": saved, "classes": ["a"]}
    check_compatible(state, dict(saved), ("a",), Path("last.pt"))  # unchanged: goes on
    changed = {**saved, setting: "after"}
    refusal = "holds a" if setting in ("arch", "task") else f"was run with {setting} 'before'"
    if setting in KEPT_ON_RESUME:
        with pytest.raises(TrainError, match=refusal):
            check_compatible(state, changed, ("a",), Path("last.pt"))
    else:
        check_compatible(state, changed, ("a",), Path("last.pt"))  # applied from here on
    assert set(MUST_KEEP) <= set(KEPT_ON_RESUME)


@pytest.mark.slow
def test_resume_refuses_what_would_not_continue_the_run(ucf_tiny, tmp_path) -> None:
    with pytest.raises(TrainError, match="nothing to resume"):
        train(tiny_config(ucf_tiny, tmp_path / "r", epochs=1, resume=True), progress=False)
    assert not (tmp_path / "r").exists()  # nothing written
    train(tiny_config(ucf_tiny, tmp_path / "r", epochs=1), progress=False)
    with pytest.raises(TrainError, match="was run with batch_size 4, not 2"):
        train(tiny_config(ucf_tiny, tmp_path / "r", batch_size=2, resume=True), progress=False)
    with pytest.raises(TrainError, match="was run with lr 0.01, not 0.1"):  # the optimizer's
        train(tiny_config(ucf_tiny, tmp_path / "r", lr=0.1, resume=True), progress=False)
    with pytest.raises(TrainError, match="holds a smp r3d10 run, not smp c3d"):
        train(tiny_config(ucf_tiny, tmp_path / "r", arch="c3d", resume=True), progress=False)
    with pytest.raises(TrainError, match="was run with clips_per_video 1, not 2"):
        cfg = tiny_config(ucf_tiny, tmp_path / "r", clips_per_video=2, resume=True)
        train(cfg, progress=False)
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    del state["config"]["clips_per_video"]  # as saved before the setting existed: 1
    save_checkpoint(tmp_path / "r" / "last.pt", state)
    train(tiny_config(ucf_tiny, tmp_path / "r", epochs=2, resume=True), progress=False)
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 2


def test_cosine_schedule_warms_up_then_decays_as_computed_by_hand() -> None:
    cfg = make_config("supervised", "quick", lr=0.1, epochs=3, warmup_epochs=1)
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, 2, cfg)  # 2 steps an epoch: 6, 2 of warm-up
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # warm-up: 0.1 * 1/2, 0.1 * 2/2; then 0.05 * (1 + cos(pi * k / 4)) for k = 0..3
    expected = [0.05, 0.1, 0.1, 0.05 * (1 + math.sqrt(0.5)), 0.05, 0.05 * (1 - math.sqrt(0.5))]
    assert lrs == pytest.approx(expected)


def test_plateau_schedule_divides_every_rate_by_ten_after_patience() -> None:
    cfg = make_config("smp", "quick", lr=0.01, plateau_patience=2)
    optimizer = make_optimizer(MotionNet("r3d10", mg=False), cfg)
    scheduler = make_scheduler(optimizer, 5, cfg)
    for epoch, val_loss in enumerate([1.0, 1.0, 1.0]):  # the best, then 2 epochs no better
        scheduler.step(val_loss)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.1]), epoch
    scheduler.step(1.0)  # a third epoch no better: more than the patience
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.001, 0.01])


def test_each_task_crops_as_its_original() -> None:
    assert make_config("smp").train_crop == "random"
    assert make_config("prp").train_crop == "center"
    assert make_config("supervised").train_crop == "random"
    assert make_config("prp", train_crop="random").train_crop == "random"
    with pytest.raises(ConfigError, match="unknown crop 'corner'"):
        make_config("prp", train_crop="corner")


@pytest.mark.slow
def test_smp_validation_loss_means_the_same_at_every_epoch(ucf_tiny) -> None:
    """Training blends the CAM mask in by lambda(epoch); validation keeps DPAU alone, so best.pt
    and the plateau schedule compare one quantity across epochs."""
    videos = load_index(ucf_tiny).train[:2]
    ds = VideoDataset(videos, clip_len=8, resize=(32, 40), crop=32, train=False, views=4)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    batch.pop("skipped")
    torch.manual_seed(0)
    model = MotionNet("r3d10").eval()
    cfg = make_config("smp", "quick", epochs=10, lam_schedule="linear")
    with torch.no_grad():
        val = [make_step(cfg, epoch, training=False)(model, batch)[0] for epoch in (0, 5, 9)]
        trained = [make_step(cfg, epoch)(model, batch)[0] for epoch in (0, 9)]
        dpau = make_step(replace(cfg, lam_schedule="dpau"), 9)(model, batch)[0]
    assert val[0] == val[1] == val[2] == dpau  # the DPAU mask alone
    assert trained[0] != trained[1]  # lambda 0.1 vs 1.0: another mask


def test_plateau_schedule_stops_at_the_original_minimum() -> None:
    cfg = make_config("smp", "quick", lr=0.01, plateau_patience=0)
    optimizer = make_optimizer(MotionNet("r3d10", mg=False), cfg)
    scheduler = make_scheduler(optimizer, 5, cfg)
    for _ in range(12):  # no improvement: a tenth each epoch, down to 1e-7
        scheduler.step(1.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-7, 1e-7])


@pytest.mark.slow
def test_non_finite_gradients_stop_before_they_reach_the_weights(
    ucf_tiny, tmp_path, monkeypatch
) -> None:
    calls, motion_step = [], smp_lite.train.motion_step

    def nan_gradients_at_step_3(model, batch, lam, weights):
        calls.extend([1] if model.training else [])
        loss, terms, heads = motion_step(model, batch, lam, weights)
        if len(calls) == 3:  # + 0 * sqrt(|w - w|^2): a finite loss whose gradient is NaN
            w = next(model.parameters())
            loss = loss + 0.0 * torch.sqrt((w - w.detach()).pow(2).sum())
        return loss, terms, heads

    monkeypatch.setattr(smp_lite.train, "motion_step", nan_gradients_at_step_3)
    cfg = tiny_config(ucf_tiny, tmp_path / "run", batch_size=2, limit_batches=0, save_every=1)
    with pytest.raises(TrainError, match=r"gradients became nan .* at step 3 \(epoch 1, batch 3"):
        train(cfg, progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")  # saved after step 2
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_validation_under_torchrun_counts_each_clip_once(tmp_path) -> None:
    """3 held-out videos (one group of 3 classes) over 2 ranks: the validation row equals a
    single-process evaluation of the validated weights (last.pt), clip for clip."""
    groups = {"train": [2, 3, 4, 5], "test": [1]}
    ucf_tiny = write_ucf_layout(tmp_path / "data", ["A", "B", "C"], groups)
    out = tmp_path / "run"
    options = ["--task", "supervised", "--epochs", "1", "--val-fraction", "0.25"]
    done = torchrun(tiny_pretrain_args(ucf_tiny, out, *options), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    row = read_metrics(out)[0]
    assert row["val_clips"] == 3  # not 4: no clip is repeated to even the shards

    cfg = tiny_config(ucf_tiny, tmp_path / "x", task="supervised", val_fraction=0.25)
    cfg = replace(cfg, batch_size=2, limit_batches=0)
    runtime = Runtime(torch.device("cpu"), "fp32", False)
    index = load_index(ucf_tiny)
    model = build_model(cfg, len(index.classes))
    model.load_state_dict(load_checkpoint(out / "last.pt")["model"])
    metrics = task_metrics(cfg, len(index.classes)).clone(prefix="val_")
    datasets = pretraining_datasets(cfg, index.train)
    val_loader = make_loaders(datasets, cfg.seed, cfg.batch_size, 0, runtime, 1)["val"]
    assert evaluate_batches(
        model, val_loader, make_step(cfg, 0, False), metrics, runtime, Event(), set()
    )
    alone = metrics_row(metrics)
    for key in ("val_clips", "val_loss", "val_acc_action"):
        assert row[key] == pytest.approx(alone[key], rel=1e-5), key


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(crop=0), "crop must be positive and divisible by 16, got 0"),
        (dict(crop=-16), "crop must be positive and divisible by 16, got -16"),
        (dict(resize=(0, 64)), "resize must be positive, got 0x64"),
        (dict(lr=math.inf), "learning rate must be positive, got inf"),
        (dict(lr=math.nan), "learning rate must be positive, got nan"),
        (dict(head_lr_scale=math.nan), "head lr scale must be positive, got nan"),
        (dict(momentum=1.5), r"momentum must be in \[0, 1\)"),
        (dict(weight_decay=-1e-4), "weight decay must be 0 or more"),
        (dict(limit_batches=-1), "limit batches must be 0 or more"),
        (dict(workers=-2), "workers must be 0 or more"),
        (dict(clips_per_video=0), "clips per video must be 1 or more"),
        (dict(warmup_epochs=-1), "warm-up epochs must be 0 or more"),
        (dict(seed=-1), r"seed must be in 0..4294967295, got -1"),
        (dict(seed=2**32), r"seed must be in 0..4294967295, got 4294967296"),
        (dict(resume=True, overwrite=True), "pass --resume or --overwrite, not both"),
    ],
)
def test_settings_no_run_can_use_are_refused_up_front(kw, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config("smp", "quick", **kw)


def test_the_default_folder_tells_runs_of_a_sweep_apart() -> None:
    assert str(default_out(make_config("smp", arch="r3d18"))) == "runs/smp-r3d18-synth"
    sweep = make_config("smp", arch="r3d18", lr=0.1, seed=3)
    assert str(default_out(sweep)) == "runs/smp-r3d18-synth-lr0.1-seed3"
    sup = make_config("supervised", "paper", data="ucf101:/data/UCF101", seed=1)
    assert str(default_out(sup)) == "runs/supervised-r3d18-UCF101-seed1"  # lr 0.1 is its preset's


def csv_of(tmp_path, ucf_tiny, rows: list[tuple[int, str, str]]):
    """A csv list over ucf_tiny's training videos: (video number, label, split) per row."""
    videos = load_index(ucf_tiny).train
    path = tmp_path / "list.csv"
    lines = [f"{videos[i].path},{label},{split}" for i, label, split in rows]
    path.write_text("path,label,split\n" + "\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("case", ["val fraction 0.99", "one training video"])
def test_an_empty_training_part_is_one_line(case, ucf_tiny, tmp_path) -> None:
    data, kw = ucf_tiny, dict(val_fraction=0.99)
    if case == "one training video":
        data, kw = csv_of(tmp_path, ucf_tiny, [(0, "a", "train"), (1, "b", "test")]), {}
    with pytest.raises(DataError, match="no training video is left after holding out"):
        train(tiny_config(data, tmp_path / "run", **kw), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_one_class_supervised_run_is_refused(ucf_tiny, tmp_path) -> None:
    data = csv_of(tmp_path, ucf_tiny, [(i, "walk", "train") for i in range(4)])
    with pytest.raises(DataError, match="all 'walk', the loss would be 0"):
        train(tiny_config(data, tmp_path / "run", task="supervised"), progress=False)
    train(tiny_config(data, tmp_path / "prp", task="prp", epochs=1), progress=False)  # fine


@pytest.mark.slow
def test_an_overwrite_that_fails_before_saving_puts_the_previous_run_back(ucf_tiny, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(ucf_tiny, out, epochs=1), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # 160-frame clips: every video is too short, found when the data is read
    with pytest.raises(DataError, match="no training video has the 161 frames"):
        train(tiny_config(ucf_tiny, out, clip_len=160, overwrite=True), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the run is back, whole
    train(tiny_config(ucf_tiny, out, epochs=1, seed=5, overwrite=True), progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "config.json",
        "last.pt",
        "metrics.jsonl",
    ]
    assert load_checkpoint(out / "last.pt")["config"]["seed"] == 5


@pytest.mark.slow
def test_a_failed_start_leaves_nothing_and_the_corrected_command_runs(ucf_tiny, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DataError, match="no training video has the 161 frames"):
        train(tiny_config(ucf_tiny, out, clip_len=160), progress=False)
    assert not out.exists()  # no config.json: a folder with no checkpoint is no run
    train(tiny_config(ucf_tiny, out, epochs=1), progress=False)  # no --overwrite needed
    assert [r["epoch"] for r in read_metrics(out)] == [1]


@pytest.mark.slow
def test_resume_goes_on_past_a_torn_last_metrics_line(ucf_tiny, tmp_path) -> None:
    out = tmp_path / "run"
    train(tiny_config(ucf_tiny, out, epochs=1), progress=False)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_loss": 0.5')  # killed while writing epoch 2's row
    train(tiny_config(ucf_tiny, out, epochs=2, resume=True), progress=False)
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert (out / "metrics.jsonl").read_text().count("\n") == 2


@pytest.mark.slow
def test_under_torchrun_a_refusal_stops_every_rank(ucf_tiny, tmp_path) -> None:
    out = tmp_path / "run"
    with run_folder(out, resume=False, overwrite=False):  # this pytest process holds it
        done = subprocess.run(
            torchrun_command(tiny_pretrain_args(ucf_tiny, out)),
            cwd=tmp_path,
            env=TORCHRUN_ENV,
            capture_output=True,
            text=True,
            timeout=120,  # a rank left waiting would hang
        )
        assert done.returncode != 0
        assert f"error: {out} is in use by another run (pid {os.getpid()}" in done.stderr
        assert "rank 0 could not take the run folder" in done.stderr  # what rank 1 says
        assert sorted(p.name for p in out.iterdir()) == ["run.lock"]


def cross_entropy_by_hand(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the batch of -log softmax(logits)[label], one sample at a time."""
    losses = []
    for z, y in zip(logits.tolist(), labels.tolist(), strict=True):
        log_sum = math.log(sum(math.exp(v) for v in z))
        losses.append(log_sum - z[y])
    return sum(losses) / len(losses)


def test_motion_loss_computed_by_hand() -> None:
    """Rate-1 fillers are not supervised, the error is averaged over each sample's supervised
    elements and then over the batch, the mask is lam * CAM + (1 - lam) * DPAU, and the CE terms
    weigh 0.1 (MG heads: their mean)."""
    torch.manual_seed(0)
    model = MotionNet("r3d10", mg=True)
    b, t2, h, w = 2, 8, 16, 16  # a 4-frame clip's 8-frame target at 16x16
    out = {
        "recon": torch.rand(b, 3, t2, h, w),
        "logits": [torch.randn(b, NUM_RATES) for _ in range(4)],
        "rate_map": torch.randn(b, 512, 1, 2, 2),
    }
    rate = torch.tensor([0, 3])  # sample 0 at rate 1, sample 1 at rate 8
    weight = torch.tensor([[1.0, 0.0] * (t2 // 2), [1.0] * t2])  # rate 1: odd frames are fillers
    dpau_level = torch.tensor([1.5, 0.9])  # a flat DPAU map per sample: the same after upsampling
    targets = {
        "target": torch.rand(b, 3, t2, h, w),
        "target_weight": weight,
        "dpau": dpau_level[:, None, None, None, None].expand(b, 3, t2, 13, 13).clone(),
        "rate": rate,
    }
    lam = 0.3
    cam = motion_mask_cam(model.rate_heads[0].fc.weight, out["rate_map"], rate, (t2, h, w))

    per_sample = []
    for i in range(b):  # the mean over each sample's supervised elements
        total, count = 0.0, 0
        for f in range(t2):
            if weight[i, f] == 0:
                continue
            mask = lam * cam[i, :, f] + (1 - lam) * dpau_level[i]  # (3, h, w)
            err = (out["recon"][i, :, f] - targets["target"][i, :, f]) ** 2
            total += float((mask * err).sum())
            count += 3 * h * w
        per_sample.append(total / count)
    recon = sum(per_sample) / b  # then over the batch
    ce = [cross_entropy_by_hand(z, rate) for z in out["logits"]]
    expected = recon + 0.1 * ce[0] + 0.1 * sum(ce[1:]) / 3

    loss, terms = motion_loss(out, targets, lam, model.rate_heads[0].fc.weight)
    assert terms["recon"].item() == pytest.approx(recon, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce[0], rel=1e-5)
    assert terms["ce_mg"].item() == pytest.approx(sum(ce[1:]) / 3, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_rate_1_sample_weighs_as_much_as_a_rate_8_sample() -> None:
    """Half of a rate-1 target is fillers; its error still counts as much as a rate-8 one's."""
    model = MotionNet("r3d10", mg=False)
    b, t2, h, w = 2, 8, 16, 16
    target = torch.zeros(b, 3, t2, h, w)
    recon = torch.zeros(b, 3, t2, h, w)
    recon[0] = 1.0  # only the rate-1 sample is wrong, by 1 everywhere
    targets = {
        "target": target,
        "target_weight": torch.tensor([[1.0, 0.0] * (t2 // 2), [1.0] * t2]),
        "dpau": torch.ones(b, 3, t2, 13, 13),  # a plain loss: every element weighs 1
        "rate": torch.tensor([0, 3]),
    }
    out = {"recon": recon, "logits": [torch.zeros(b, NUM_RATES)], "rate_map": None}
    _, terms = motion_loss(out, targets, 0.0, model.rate_heads[0].fc.weight)
    assert terms["recon"].item() == pytest.approx(0.5)  # (1 + 0) / 2, not 16 / (16 + 32)
    recon = torch.zeros(b, 3, t2, h, w)
    recon[1] = 1.0  # now only the rate-8 sample is wrong
    _, terms = motion_loss({**out, "recon": recon}, targets, 0.0, model.rate_heads[0].fc.weight)
    assert terms["recon"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("arch", ["r3d10", "r21d10", "r3d18"])
@pytest.mark.slow
def test_a_residual_backbone_fits_the_rate_of_a_handful_of_clips(arch, synth_tiny) -> None:
    """PRP's own loss and optimiser, on two videos at each of the four rates: the rate's
    cross-entropy falls well below chance (ln 4) in a few steps. It stays near ln 4 when the
    rate cannot reach the head (a broken backbone, labels out of step with the clips)."""
    index = load_index(str(synth_tiny))
    clips = VideoDataset(
        index.train[:2], clip_len=8, resize=(32, 40), crop=32, train=False, views=len(RATES)
    )
    batch = torch.utils.data.default_collate([clips[i] for i in range(len(clips))])
    torch.manual_seed(0)
    model = MotionNet(arch, mg=False)
    optimizer = make_optimizer(model, make_config("prp", "quick", arch=arch))
    ces = []
    for _ in range(8):
        loss, terms, _ = smp_lite.train.motion_step(model, batch, lam=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ces.append(terms["ce"].item())
    assert ces[0] > 1.0 and min(ces[-3:]) < 0.5, ces
