from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import smp_lite.tools.reproduce
from smp_lite.cli import app
from smp_lite.errors import ConfigError, DataError
from smp_lite.harness.checkpoint import BEST, LAST, RESULTS
from smp_lite.tools.reproduce import (
    EVALUATIONS,
    INITS,
    PROFILES,
    REFIT_BN,
    delete_checkpoints,
    duration,
    is_done,
    jsonable,
    pick_profile,
    plan_steps,
    reproduce,
    run_step,
    seconds_per_unit,
    step_units,
)

TINY = PROFILES["tiny"]  # as defined: the fixture below patches the dict for this module


@pytest.fixture(scope="module")
def tiny_reproduced(tmp_path_factory, synth_tiny):
    """The tiny profile run once: every step of the pipeline on 48 generated videos, for one
    backbone, R3D: the others go through the same steps and table code, and would add time
    and checkpoints, no case."""
    one_arch = dataclasses.replace(PROFILES["tiny"], archs=("r3d10",), keep_checkpoints=True)
    root = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PROFILES, "tiny", one_arch)
        runs, results = root / "runs", root / "results"
        summary = reproduce("tiny", str(synth_tiny), runs, results, progress=False)
        yield summary, runs, results
    shutil.rmtree(root, ignore_errors=True)  # the checkpoints


@pytest.mark.slow
def test_tiny_profile_writes_every_table_picture_and_number(tiny_reproduced) -> None:
    summary, runs, results = tiny_reproduced
    names = {p.name for p in results.iterdir()}
    tables = {"table1.md", "table2.md", "retrieval.md", "pretrain.md", "summary.json"}
    pictures = {"table1.png", "speed_confusion.png", "retrieval_neighbours.png"}
    assert tables | pictures | {"pretrain_curves.png"} <= names
    archs = PROFILES["tiny"].archs
    steps = json.loads((runs / "steps.json").read_text())
    # motion energy once, whatever the backbones
    assert len(steps) == 1 + len(archs) * (3 + (len(EVALUATIONS) - 1) * len(INITS))
    assert summary["seconds"] == pytest.approx(sum(s["seconds"] for s in steps.values()), abs=0.5)
    # every cell comes from its run's results.json, with the difference to random init
    table = (results / "table1.md").read_text()
    for arch in archs:
        random = json.loads((runs / f"probe-speed-{arch}-random" / "results.json").read_text())
        smp = json.loads((runs / f"probe-speed-{arch}-smp" / "results.json").read_text())
        assert summary["probe-speed"][arch]["smp"]["accuracy"] == smp["accuracy"]
        diff = 100 * (smp["accuracy"] - random["accuracy"])
        cell = f"{100 * smp['accuracy']:.1f} ± {100 * smp['accuracy_std']:.1f} ({diff:+.1f} ± "
        assert cell in table  # and the paired spread of the difference
        assert smp["video"] == random["video"] and len(smp["correct"]) == smp["items"]
        finetuned = summary["finetune"][arch]["prp"]
        assert f"{100 * finetuned['accuracy']:.1f} ±" in (results / "table2.md").read_text()
        assert set(summary["retrieve"][arch]) == set(INITS)
    assert "not run yet" not in table and "| Fully-supervised | 48.83 (+6.35)" in table
    # the standardised speed probe trained on the speed probe's own features
    std = runs / "probe-speed-std-r3d10-prp"
    assert json.loads((std / "config.json").read_text())["standardize"]
    assert filecmp.cmp(std / "features.pt", runs / "probe-speed-r3d10-prp" / "features.pt")
    accuracy = summary["probe-speed-std"]["r3d10"]["prp"]["accuracy"]
    assert f"| PRP | {100 * accuracy:.1f} ±" in table.split("cached features standardised")[1]
    # the speed probe after BatchNorm re-estimation, and motion energy: a row for all backbones
    refit = json.loads((runs / "probe-speed-bn-r3d10-random" / "config.json").read_text())
    assert refit["refit_bn"] == REFIT_BN and not refit["features"]
    accuracy = summary["probe-speed-bn"]["r3d10"]["random"]["accuracy"]  # the first column
    assert f"| Random | {100 * accuracy:.1f} ±" in table.split("BatchNorm statistics re-")[1]
    energy = json.loads((runs / "probe-speed-energy" / "config.json").read_text())
    assert energy["init"] == "motion-energy" and energy["standardize"]
    cell = f"{100 * summary['probe-speed-energy']['accuracy']:.1f} ±"
    assert f"| Motion energy (no network) | {cell}" in table
    # the evaluations start from the pretrainings' best.pt
    config = json.loads((runs / "probe-speed-r3d10-prp" / "config.json").read_text())
    assert config["init"] == str(runs / "pretrain-prp-r3d10" / "best.pt")
    nearest = summary["retrieve"]["r3d10"]["smp"]["neighbours"][0]
    assert len(nearest["nearest"]) == len(nearest["classes"]) == 5


def test_backbones_can_be_added_as_columns_and_unknown_ones_are_refused(tmp_path) -> None:
    prof, _ = pick_profile("synth", None, ("c3d", "r3d10", "r21d10", "r3d18"))
    steps = {s.name for s in plan_steps(prof, "data/synth", tmp_path)}
    assert {"pretrain-smp-r3d18", "probe-speed-r3d18-supervised", "finetune-r3d18-prp"} <= steps
    assert "probe-speed-bn-r3d18-random" not in steps  # the profile re-estimates BatchNorm on C3D
    assert steps >= {s.name for s in plan_steps(PROFILES["synth"], "data/synth", tmp_path)}
    with pytest.raises(ConfigError, match="unknown architecture 'r4d'"):
        pick_profile("synth", None, ("c3d", "r4d"))


def test_the_tiny_profile_deletes_its_checkpoints_and_keeps_its_results(tmp_path) -> None:
    assert not TINY.keep_checkpoints and PROFILES["synth"].keep_checkpoints
    for step in ("pretrain-smp-c3d", "probe-speed-c3d-smp"):
        (tmp_path / step).mkdir()
        for name in ("best.pt", "last.pt", "features.pt", "results.json", "config.json"):
            (tmp_path / step / name).write_bytes(b"x" * 10)
    assert delete_checkpoints(tmp_path) == 2 * 3 * 10
    assert {p.name for p in tmp_path.glob("*/*")} == {"results.json", "config.json"}


@pytest.mark.slow
def test_a_rerun_reuses_what_finished_and_resumes_or_redoes_the_rest(tiny_reproduced, capsys):
    summary, runs, results = tiny_reproduced
    steps = json.loads((runs / "steps.json").read_text())
    # an interrupted fine-tuning (its last.pt kept) and a retrieval whose settings changed
    (runs / "finetune-r3d10-smp" / "results.json").unlink()
    del steps["finetune-r3d10-smp"]
    steps["retrieve-r3d10-prp"]["settings"]["test_views"] = 7
    (runs / "steps.json").write_text(json.dumps(steps))
    kept = (runs / "probe-speed-r3d10-smp" / "results.json").stat().st_mtime_ns
    partial = reproduce("tiny", summary["data"], runs, results, progress=False, report_only=True)
    assert "smp" not in partial["finetune"]["r3d10"] and "[" not in capsys.readouterr().out
    assert "| SMP | " in (results / "table2.md").read_text().split("## Fine-tuning")[1]
    assert "not run yet" in (results / "table2.md").read_text().split("## Fine-tuning")[1]
    again = reproduce("tiny", summary["data"], runs, results, progress=False)
    printed = capsys.readouterr().out
    assert printed.count("done before, reused") == len(steps) - 1
    assert "finetune-r3d10-smp: fine-tuning of r3d10 from smp weights, about" in printed
    assert "retrieve-r3d10-prp: retrieval of r3d10 from prp weights, about" in printed
    assert (runs / "probe-speed-r3d10-smp" / "results.json").stat().st_mtime_ns == kept
    assert json.loads((runs / "finetune-r3d10-smp" / "config.json").read_text())["resume"]
    assert json.loads((runs / "steps.json").read_text())["finetune-r3d10-smp"]["resumed"]
    assert not json.loads((runs / "retrieve-r3d10-prp" / "config.json").read_text())["resume"]
    assert again["probe-speed"] == summary["probe-speed"]
    assert (
        again["finetune"]["r3d10"]["smp"]["accuracy"]
        == summary["finetune"]["r3d10"]["smp"]["accuracy"]
    )  # a finished fine-tuning resumed: the same weights, the same test


def test_an_evaluation_is_redone_when_the_pretraining_it_read_was_run_again(tmp_path) -> None:
    steps = {s.name: s for s in plan_steps(PROFILES["synth"], "data/synth", tmp_path)}
    pretrain, probe = steps["pretrain-smp-c3d"], steps["probe-speed-c3d-smp"]
    records = {s.name: {"settings": jsonable(s.settings)} for s in (pretrain, probe)}
    for path in (tmp_path / pretrain.name / BEST, tmp_path / probe.name / RESULTS):
        path.parent.mkdir()
        path.write_text("{}")
    os.utime(tmp_path / pretrain.name / BEST, (1_000, 1_000))
    assert is_done(pretrain, records, tmp_path) and is_done(probe, records, tmp_path)
    os.utime(tmp_path / probe.name / RESULTS, (500, 500))  # the weights it read came later
    assert is_done(pretrain, records, tmp_path) and not is_done(probe, records, tmp_path)
    records[probe.name]["settings"]["epochs"] = 99
    os.utime(tmp_path / probe.name / RESULTS, (2_000, 2_000))
    assert not is_done(probe, records, tmp_path)  # settings changed


def test_a_step_resumes_only_from_a_last_pt_made_after_its_weights(tmp_path, monkeypatch):
    """A probe resumed over newer weights would reuse the features of the old ones."""
    step = next(
        s
        for s in plan_steps(PROFILES["synth"], "data/synth", tmp_path)
        if s.kind == "probe-speed" and s.init == "smp"
    )
    weights, last = Path(step.settings["init"]), tmp_path / step.name / LAST
    for path in (weights, last):
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    started = {}
    monkeypatch.setattr(
        smp_lite.tools.reproduce, "make_eval_config", lambda kind, **settings: settings
    )
    monkeypatch.setattr(
        smp_lite.tools.reproduce, "probe", lambda settings, progress: started.update(settings)
    )
    os.utime(weights, (1_000, 1_000))
    os.utime(last, (500, 500))  # the pretraining ran again after this probe started
    assert not run_step(step, last.parent, progress=False)
    assert (started["resume"], started["overwrite"]) == (False, True)
    os.utime(last, (2_000, 2_000))  # an interrupted probe of these weights
    assert run_step(step, last.parent, progress=False) and started["resume"]


def test_the_time_left_is_estimated_from_the_steps_done(tmp_path) -> None:
    steps = plan_steps(PROFILES["synth"], "data/synth", tmp_path)
    units = {s.name: step_units(s, n_train=432, n_test=168) for s in steps}
    # SMP and PRP cost the same, supervised pretraining less an epoch, a frozen-feature step less
    prof = PROFILES["synth"]
    epochs = prof.pretrain["epochs"], prof.supervised["epochs"]
    assert units["pretrain-smp-c3d"] == units["pretrain-prp-c3d"]
    assert units["pretrain-smp-c3d"] / epochs[0] > units["pretrain-supervised-c3d"] / epochs[1]
    assert units["finetune-c3d-smp"] > units["probe-action-c3d-smp"]
    assert units["probe-speed-c3d-smp"] > 5 * units["probe-speed-std-c3d-smp"] > 0  # no features
    # re-estimating BatchNorm runs more clips through the network; motion energy decodes alone
    assert units["probe-speed-bn-c3d-smp"] > units["probe-speed-c3d-smp"]
    assert units["probe-speed-c3d-smp"] > units["probe-speed-energy"] > 0
    records = {
        "pretrain-smp-c3d": {"arch": "c3d", "seconds": 600.0, "units": 3000.0},
        "pretrain-smp-r3d10": {"arch": "r3d10", "seconds": 300.0, "units": 3000.0},
    }
    assert seconds_per_unit(records, "r3d10", 9.0) == pytest.approx(0.1)
    assert seconds_per_unit(records, "r21d10", 9.0) == pytest.approx(0.15)  # all steps
    assert seconds_per_unit({}, "r21d10", 9.0) == 9.0  # the profile's guess
    records["pretrain-prp-r3d10"] = {"arch": "r3d10", "seconds": 1, "units": 3000, "resumed": True}
    assert seconds_per_unit(records, "r3d10", 9.0) == pytest.approx(0.1)  # resumed: left out
    assert [duration(s) for s in (42, 600, 7500)] == ["42 s", "10 min", "2 h 05 min"]


def test_bad_profiles_and_data_are_refused_in_one_line(tmp_path, synth_tiny) -> None:
    with pytest.raises(ConfigError, match="unknown profile 'huge': choose one of tiny, synth"):
        reproduce("huge", runs=tmp_path / "runs")
    with pytest.raises(ConfigError, match="profile 'paper' needs --data, e.g. --data ucf101:"):
        reproduce("paper", runs=tmp_path / "runs")
    with pytest.raises(DataError, match="other settings than this profile's 'default' dataset"):
        reproduce("synth", str(synth_tiny), tmp_path / "runs", tmp_path / "results", progress=False)
    result = CliRunner().invoke(app, ["reproduce", "--profile", "paper"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: profile 'paper' needs --data, e.g. --data ucf101:/path/to/UCF101"
    ]


def test_the_plan_has_motion_energy_first_and_the_profiles_batchnorm_probes(tmp_path) -> None:
    steps = plan_steps(TINY, "data/synth-tiny", tmp_path)
    evaluations = [s for s in steps if s.kind != "pretrain"]
    assert evaluations[0].name == "probe-speed-energy" and evaluations[0].arch == ""
    assert [s.name for s in steps].count("probe-speed-energy") == 1
    assert evaluations[0].settings["init"] == "motion-energy"
    assert evaluations[0].settings["standardize"]
    names = [s.name for s in evaluations]
    archs = TINY.archs
    refits = [f"probe-speed-bn-{arch}-{init}" for arch in archs for init in INITS]
    assert names[1 + 2 * len(refits) : 1 + 3 * len(refits)] == refits  # after the speed probes
    by_name = {s.name: s for s in steps}
    speed, refit = by_name["probe-speed-c3d-prp"], by_name["probe-speed-bn-c3d-prp"]
    assert refit.settings == speed.settings | {"refit_bn": REFIT_BN}
    # the synth profile re-estimates BatchNorm on C3D only; every other evaluation on all three
    synth = plan_steps(PROFILES["synth"], "data/synth", tmp_path)
    assert {s.arch for s in synth if s.kind == "probe-speed-bn"} == {"c3d"}
    assert {s.arch for s in synth if s.kind == "probe-speed-std"} == {"c3d", "r3d10", "r21d10"}
