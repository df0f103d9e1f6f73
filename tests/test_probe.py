"""The linear probe (smp_lite/probe.py): standardised features, a speed probe from a
pretrained checkpoint through its run folder and resume, a probe on another's features,
BatchNorm statistics re-estimated on the training clips, and the motion-energy baseline."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY

from smp_lite.config import RATES
from smp_lite.data import VideoDataset
from smp_lite.errors import ConfigError, DataError, RunInterrupted
from smp_lite.evaluate import (
    BackboneFeature,
    clip_dataset,
    eval_out,
    frozen_outputs,
    initial_backbone,
    make_eval_config,
)
from smp_lite.harness.engine import fit
from smp_lite.harness.folders import read_metrics
from smp_lite.harness.launch import new_run
from smp_lite.harness.runtime import make_runtime
from smp_lite.index import Video, load_index
from smp_lite.probe import (
    MotionEnergy,
    linear_parts,
    probe,
    probe_features,
    probe_results,
    refit_batchnorm,
)
from smp_lite.tools.synth import write_video


def tiny_features(train: int, test: int) -> dict:
    """A probe's cached features as probe_parts holds them: 16 dimensions 1000x smaller than
    usual, the class (of 2) along one of them."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> dict:
        labels = torch.randint(0, 2, (n,), generator=g)
        features = torch.randn(n, 16, generator=g)
        features[:, 3] += 6 * labels  # the class, along one dimension
        return {"output": 1e-3 * features, "label": labels, "rate": labels,
                "video": torch.arange(n)}  # fmt: skip

    return {"train": split(train), "test": split(test), "views_dropped": {"train": 0, "test": 0},
            "test_groups": [f"g{v % 8}" for v in range(test)]}  # fmt: skip


@pytest.mark.slow
def test_a_standardised_probe_sees_what_tiny_features_hold(tmp_path) -> None:
    """Features 1000x smaller than usual, their class in one dimension: with the seed's SGD the
    linear layer hardly moves; standardised, it finds the class."""
    cached = tiny_features(256, 128)
    accuracy = {}
    for standardize in (False, True):
        (tmp_path / str(standardize)).mkdir()
        cfg = make_eval_config("probe", preset="quick", standardize=standardize,
                               out=str(tmp_path / str(standardize)))  # fmt: skip
        runtime, names = make_runtime("cpu", "fp32"), ["1", "2", "4", "8"]
        parts = linear_parts(cfg, cached, names, runtime)
        run = new_run(cfg, parts, runtime, tmp_path / str(standardize))
        fit(run, progress=False)
        accuracy[standardize] = probe_results(cfg, cached, names, run)["accuracy"]
    assert accuracy[True] > 0.95 > 0.7 > accuracy[False]  # chance: 0.5


def test_a_probes_epochs_share_one_bar_and_print_no_phase_lines(tmp_path, capsys) -> None:
    """A probe's epochs take seconds: on a terminal one bar over all of them (its count only
    grows, to every epoch's steps), in a log no line for each epoch's test pass; either way a
    row and a line of metrics.jsonl per epoch."""
    cached, names = tiny_features(64, 32), ["1", "2", "4", "8"]
    runtime = make_runtime("cpu", "fp32")
    for progress in (True, False):
        out = tmp_path / str(progress)
        out.mkdir()
        cfg = make_eval_config("probe", preset="quick", epochs=3, batch_size=16, out=str(out))
        fit(new_run(cfg, linear_parts(cfg, cached, names, runtime), runtime, out), progress)
        printed, bars = capsys.readouterr()
        assert [row["epoch"] for row in read_metrics(out)] == [1, 2, 3]
        assert [line[:8] for line in printed.splitlines()] == ["epoch=1 ", "epoch=2 ", "epoch=3 "]
        counts = [(int(n), int(total)) for n, total in re.findall(r"(\d+)/(\d+) \[", bars)]
        if progress:  # 64 clips in batches of 16: 4 steps an epoch
            assert counts[0] == (0, 12) and {total for _, total in counts} == {12}
            assert [n for n, _ in counts] == sorted(n for n, _ in counts)
        else:
            assert counts == []


@pytest.mark.slow
def test_ctrl_c_while_caching_keeps_the_features_done_and_resume_goes_on(
    ucf_tiny, pretrained, tmp_path, monkeypatch
) -> None:
    """Stopped at its third batch of clips, the probe saves the features done and says so; the
    resume computes only the rest and gives the numbers of a run never stopped."""
    cfg = make_eval_config(
        "probe", preset="quick", data=str(ucf_tiny), arch="r3d10", init=str(pretrained),
        epochs=2, workers=0, precision="fp32", clip_len=8, resize=(32, 40), crop=32,
        out=str(tmp_path / "cut"),
    )  # fmt: skip
    whole = probe(replace(cfg, out=str(tmp_path / "whole")), progress=False)
    forward, calls = BackboneFeature.forward, []

    def ctrl_c_at_the_third_batch(self, clip):
        calls.append(len(clip))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return forward(self, clip)

    monkeypatch.setattr(BackboneFeature, "forward", ctrl_c_at_the_third_batch)
    with pytest.raises(RunInterrupted, match="features.partial.pt"):
        probe(cfg, progress=False)
    cut = tmp_path / "cut"
    done = torch.load(cut / "features.partial.pt")
    assert sum(len(split["output"]) for split in done.values()) == sum(calls[:2])
    assert (cut / "config.json").is_file() and not (cut / "features.pt").exists()
    monkeypatch.undo()
    calls.clear()
    resumed = probe(replace(cfg, resume=True), progress=False)
    assert resumed["correct"] == whole["correct"] and resumed["accuracy"] == whole["accuracy"]
    ours, theirs = torch.load(cut / "features.pt"), torch.load(tmp_path / "whole" / "features.pt")
    for split in ("train", "test"):
        assert torch.equal(ours[split]["output"], theirs[split]["output"]), split
        assert torch.equal(ours[split]["video"], theirs[split]["video"]), split
    assert not (cut / "features.partial.pt").exists()


@pytest.mark.slow
def test_speed_probe_from_a_pretrained_checkpoint(ucf_tiny, pretrained, tmp_path, capsys) -> None:
    out = tmp_path / "probe"
    common = dict(data=str(ucf_tiny), init=str(pretrained), arch="r3d10", out=str(out), **TINY)
    results = probe(make_eval_config("probe", epochs=2, **common), progress=False)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch=")]
    assert len(printed) == 2 and all(" test_acc_speed=" in line for line in printed), printed
    test_videos = len(load_index(ucf_tiny).test)
    assert results["items"] == len(RATES) * test_videos  # every test video at every rate
    assert set(results["per_class"]) == {"1", "2", "4", "8"}
    assert sum(map(sum, results["confusion"])) == results["items"]
    assert results["accuracy"] == pytest.approx(
        sum(results["per_class"].values()) / 4  # balanced: the mean of the per-rate accuracies
    )
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "val_acc_speed" in rows[0] and "val_acc_at_rate_8" in rows[0]
    assert json.loads((out / "results.json").read_text())["accuracy"] == results["accuracy"]
    assert not (out / "best.pt").exists()  # the test set picks nothing
    features = (out / "features.pt").stat().st_mtime_ns
    probe(make_eval_config("probe", epochs=3, resume=True, **common), progress=False)
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    assert (out / "features.pt").stat().st_mtime_ns == features  # reused, not recomputed


@pytest.mark.slow
def test_a_probe_trains_on_another_probes_features(ucf_tiny, pretrained, tmp_path) -> None:
    common = dict(data=str(ucf_tiny), init=str(pretrained), arch="r3d10", epochs=2, **TINY)
    first = probe(make_eval_config("probe", out=str(tmp_path / "a"), **common), progress=False)
    cached = tmp_path / "a" / "features.pt"
    again = probe(
        make_eval_config("probe", out=str(tmp_path / "b"), features=str(tmp_path / "a"), **common),
        progress=False,
    )
    assert again["accuracy"] == first["accuracy"] and again["confusion"] == first["confusion"]
    assert torch.equal(torch.load(tmp_path / "b" / "features.pt")["test"]["output"],
                       torch.load(cached)["test"]["output"])  # fmt: skip
    refused = dict(common, out=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="holds other clips than this probe's: seed 0, not 1"):
        probe(make_eval_config("probe", features=str(cached), **dict(refused, seed=1)))
    with pytest.raises(ConfigError, match="other clips than this probe's: refit_bn 0, not 2"):
        probe(make_eval_config("probe", features=str(cached), **dict(refused, refit_bn=2)))
    with pytest.raises(ConfigError, match="not a probe run's features.pt"):
        probe(make_eval_config("probe", features=str(pretrained), **refused))  # a checkpoint
    cached.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="is not a readable features file"):
        probe(make_eval_config("probe", features=str(cached), **refused))
    assert not (tmp_path / "c").exists()  # refused before a run folder was made


@pytest.mark.slow
def test_features_older_than_their_checkpoint_are_refused(ucf_tiny, pretrained, tmp_path) -> None:
    """A pretraining rerun into the same folder rewrites the checkpoint a probe cached features
    of: neither resuming that probe nor reusing its features may give the old backbone's
    numbers."""
    weights = tmp_path / "best.pt"
    weights.write_bytes(pretrained.read_bytes())
    common = dict(data=str(ucf_tiny), init=str(weights), arch="r3d10", epochs=1, **TINY)
    probe(make_eval_config("probe", out=str(tmp_path / "a"), **common), progress=False)
    later = (tmp_path / "a" / "features.pt").stat().st_mtime_ns + 10**9
    os.utime(weights, ns=(later, later))  # the checkpoint written again after the probe
    resumed = dict(common, epochs=2, out=str(tmp_path / "a"), resume=True)
    with pytest.raises(ConfigError, match="--resume: .* older .*best.pt.*--overwrite"):
        probe(make_eval_config("probe", **resumed), progress=False)
    reused = dict(common, out=str(tmp_path / "b"), features=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="--features .*: .* older .*best.pt.*drop --features"):
        probe(make_eval_config("probe", **reused), progress=False)
    assert [r["epoch"] for r in read_metrics(tmp_path / "a")] == [1]  # the run left as it was
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_refit_bn_spreads_random_features_and_keeps_the_weights(ucf_tiny) -> None:
    """Random weights under BatchNorm's initial statistics (0 and 1) give features that barely
    vary; re-estimated on the training clips, the same weights give normalised activations."""
    runtime, index = make_runtime("cpu", "fp32"), load_index(ucf_tiny)
    common = dict(data=str(ucf_tiny), arch="r3d10", batch_size=8, **TINY)
    spread = {}
    for refit in (0, 2):
        cfg = make_eval_config("probe", refit_bn=refit, **common)
        cached = probe_features(cfg, runtime, index, progress=False)
        spread[refit] = cached["train"]["output"].std(0).mean().item()  # per dimension
        assert cached["test"]["output"].shape == (4 * len(index.test), 512)
    assert spread[2] > 10 * spread[0]  # measured: 0.008 and 0.38
    backbone = BackboneFeature(initial_backbone(cfg))
    weights = {name: p.clone() for name, p in backbone.named_parameters()}
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    momenta = [bn.momentum for bn in bns]
    refit_batchnorm(
        backbone, clip_dataset(cfg, index.train, "prp", 4, train=False), cfg, runtime, False
    )
    assert all(torch.equal(p, weights[name]) for name, p in backbone.named_parameters())
    assert bns and [bn.momentum for bn in bns] == momenta  # cumulative only while re-estimating
    assert all(bn.num_batches_tracked == 2 for bn in bns)  # the statistics of 2 batches alone
    assert not any(torch.allclose(bn.running_var, torch.ones_like(bn.running_var)) for bn in bns)


def grating_video(path: Path, frames: int = 140, speed: int = 3) -> Path:
    """A horizontal sine grating, one period across the frame, moving `speed` pixels a frame:
    played at rate s, consecutive frames are 3s pixels apart, so they differ more."""
    x = np.arange(80)
    rows = [127 + 100 * np.sin(2 * np.pi * (x - speed * t) / 80) for t in range(frames)]
    video = np.broadcast_to(np.stack(rows)[:, None, :, None], (frames, 64, 80, 3))
    write_video(path, np.ascontiguousarray(video).astype(np.uint8), fps=25)
    return path


def test_motion_energy_grows_with_the_playback_rate(tmp_path, capsys) -> None:
    video = Video(grating_video(tmp_path / "grating.mp4"), 0, "1")
    clips = VideoDataset(
        (video,), mode="prp", clip_len=8, resize=(32, 40), crop=32, train=False, views=len(RATES)
    )
    energy = frozen_outputs(MotionEnergy(), clips, make_runtime("cpu", "fp32"), "energy", 0, False)
    line = capsys.readouterr().out  # no bars: the pass in one line
    assert re.fullmatch(r"energy: 4 clips in [\d.]+ s \([\d,.]+ clips/s\)\n", line)
    assert energy["output"].shape == (len(RATES), 1)
    assert energy["rate"].tolist() == [0, 1, 2, 3]  # rates 1, 2, 4, 8: the same video
    assert energy["output"][:, 0].diff().min() > 0.5  # log energy: each rate's well above
    still = torch.full((1, 3, 8, 32, 32), 0.5)
    assert torch.isfinite(MotionEnergy()(still)).all()


def test_the_motion_energy_probe_needs_no_network(ucf_tiny, tmp_path) -> None:
    common = dict(data=str(ucf_tiny), init="motion-energy", target="speed", **TINY)
    cfg = make_eval_config("probe", standardize=True, epochs=2, out=str(tmp_path / "e"), **common)
    results = probe(cfg, progress=False)
    assert results["items"] == len(RATES) * len(load_index(ucf_tiny).test)
    assert len(results["correct"]) == len(results["video"]) == results["items"]
    cached = torch.load(tmp_path / "e" / "features.pt")
    assert cached["train"]["output"].shape[1] == cached["test"]["output"].shape[1] == 1
    assert eval_out(make_eval_config("probe", **common)) == Path("runs/probe-speed-motion-energy")
    for refused, message in (
        (dict(common, target="action"), "motion-energy .no network. is a baseline of the speed"),
        (dict(common, refit_bn=4), "--refit-bn needs a network: --init motion-energy has none"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_eval_config("probe", **refused)
    with pytest.raises(ConfigError, match="baseline of the speed probe only"):
        make_eval_config("finetune", init="motion-energy")
