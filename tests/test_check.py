"""`check_dataset` and `smp-lite data check` on the official layouts with real flawed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smp_lite.cli import app
from smp_lite.errors import DataError
from smp_lite.tools.check import check_dataset, format_report

runner = CliRunner()


def names(paths: list[str]) -> list[str]:
    return [Path(p).name for p in paths]


def test_check_finds_every_problem_of_hmdb51(official_hmdb) -> None:
    report = check_dataset(f"hmdb51:{official_hmdb}", workers=2, progress=False)
    assert report["dataset"] == "hmdb51" and report["classes"] == ["brush_hair", "cartwheel"]
    assert report["videos"] == {"train": 7, "test": 4, "unused": 1}
    assert report["videos_per_class"]["cartwheel"] == {"train": 4, "test": 3}
    assert names(report["missing"]) == ["Gone#1_cartwheel_f_cm_np1_fr_med_0.avi"]
    assert names(report["unlisted"]) == ["Extra_cartwheel_f_cm_np1_fr_goo_0.avi"]  # not notes.txt
    [broken] = report["undecodable"]
    assert Path(broken["path"]).name == "#122_Cleaning_brush_hair_f_nm_np1_ri_bad_0.avi"
    assert broken["error"]
    short = {Path(e["path"]).name: (e["frames"], e["rates"]) for e in report["too_short"]}
    assert short == {
        "Short_(clip)_cartwheel_f_nm_np1_fr_goo_0.avi": (10, []),
        "Medium_cartwheel_f_cm_np1_fr_goo_0.avi": (40, [1, 2]),
    }
    assert report["usable_train_videos"] == 5 and report["usable"]
    summary = format_report(report)
    assert "undecodable (skipped in training): 1" in summary
    assert "cartwheel/Short_(clip)_cartwheel_f_nm_np1_fr_goo_0.avi: 10 frames, skipped" in summary
    assert "40 frames, fits rates [1, 2] only" in summary


def test_check_of_a_clean_ucf101(official_ucf) -> None:
    report = check_dataset(f"ucf101:{official_ucf}", split=3, workers=1, progress=False)
    assert report["videos"] == {"train": 12, "test": 4, "unused": 0}
    assert not (report["missing"] or report["unlisted"] or report["undecodable"])
    assert not report["too_short"] and report["usable_train_videos"] == 12


def test_check_of_a_csv_list_reports_only_what_the_list_names(csv_list, tmp_path) -> None:
    """A CSV may name any subset of the videos beside it: none is "unlisted"; a listed file
    that is missing is."""
    listed = tmp_path / "subset.csv"
    header, *rows = csv_list.read_text().splitlines()
    rows = [r if r.startswith("/") else f"{csv_list.parent}/{r}" for r in rows]
    missing = f"{csv_list.parent}/gone.avi,run,train"
    listed.write_text("\n".join([header, *rows[:3], rows[-2], missing]) + "\n")
    report = check_dataset(f"csv:{listed}", split=1, workers=1, progress=False)
    assert report["unlisted"] == [] and len(report["missing"]) == 1
    assert report["missing"][0].endswith("gone.avi")


def test_summary_shows_the_first_names_only() -> None:
    report = {
        "dataset": "csv",
        "root": "/data",
        "split": 1,
        "classes": ["a"],
        "videos": {"train": 30, "test": 0, "unused": 0},
        "videos_per_class": {"a": {"train": 30, "test": 0}},
        "usable_train_videos": 0,
        "usable": False,
        "missing": [f"/data/v{i}.avi" for i in range(30)],
        "unlisted": [],
        "undecodable": [],
        "too_short": [],
        "min_frames": {"any_rate": 17, "rate_8": 129},
    }
    summary = format_report(report)
    assert "listed but missing: 30" in summary and "  v9.avi" in summary
    assert "v10.avi" not in summary and "... and 20 more (see --json)" in summary
    assert summary.endswith("NOT usable: no training video can be read")


def test_data_check_command_writes_json_and_exits_0(official_hmdb, tmp_path) -> None:
    out = tmp_path / "reports" / "hmdb.json"
    args = ["data", "check", f"hmdb51:{official_hmdb}", "--workers", "1", "--json", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "hmdb51 at" in result.output and "listed but missing: 1" in result.output
    report = json.loads(out.read_text())
    assert names(report["missing"]) == ["Gone#1_cartwheel_f_cm_np1_fr_med_0.avi"]
    assert len(report["undecodable"]) == 1 and len(report["too_short"]) == 2


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["hmdb51:{hmdb}", "--split", "4"], 2, "hmdb51 has splits 1, 2 and 3"),
        (["hmdb51:{tmp}"], 1, "no <class>_test_split1.txt files"),
        (["ucf101:{tmp}"], 1, "classInd.txt is missing"),
        (["{tmp}/nowhere"], 2, "does not exist"),
        (["csv:{tmp}/only_broken.csv"], 1, "none of the 1 training videos can be sampled"),
    ],
)
def test_data_check_command_fails_in_one_line(official_hmdb, tmp_path, args, code, message) -> None:
    """Exit code 2 for a usage mistake (a split out of range, a path that does not exist), 1 for
    a dataset that cannot be used."""
    (tmp_path / "only_broken.csv").write_text("path,label\nbroken.avi,x\n")
    (tmp_path / "broken.avi").write_bytes(b"junk" * 100)
    args = [a.format(hmdb=official_hmdb, tmp=tmp_path) for a in args]
    result = runner.invoke(app, ["data", "check", *args, "--workers", "1"])
    assert result.exit_code == code, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and message in error[0], result.output


def test_check_dataset_raises_on_a_wrong_layout(tmp_path) -> None:
    with pytest.raises(DataError, match="classInd.txt is missing"):
        check_dataset(f"ucf101:{tmp_path}", progress=False)


def test_data_check_help_explains_its_options() -> None:
    result = runner.invoke(app, ["data", "check", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--split", "--json", "--workers", "hmdb51"):
        assert option in result.output, option
