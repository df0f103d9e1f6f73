from __future__ import annotations

import re

import pytest

from smp_lite.errors import ConfigError, DataError
from smp_lite.index import load_index, split_by_group


def test_load_index_and_group_split(ucf_tiny) -> None:
    index = load_index(ucf_tiny)
    assert index.name == "synth" and index.classes == ("Left", "Right")
    assert len(index.train) == 8 and len(index.test) == 2
    assert {v.group for v in index.test} == {"01"}
    train, val = split_by_group(index.train, 0.25, seed=0)
    assert len(train) + len(val) == len(index.train) and val
    assert not {(v.label, v.group) for v in train} & {(v.label, v.group) for v in val}


def test_load_index_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_index(tmp_path / "nowhere")
    with pytest.raises(DataError, match="classInd.txt is missing"):
        load_index(f"ucf101:{tmp_path}")


# ---------------------------------------------------------------------------------------------
# The official layouts (UCF101, HMDB51) and csv lists, with the flaws of real downloads


def test_ucf101_splits_and_case_insensitive_class_folders(official_ucf) -> None:
    for split in (1, 2, 3):
        index = load_index(f"ucf101:{official_ucf}", split)
        assert index.name == "ucf101" and index.classes == ("ApplyEyeMakeup", "HandstandPushups")
        assert len(index.train) == 12 and len(index.test) == 4
        assert {v.group for v in index.test} == {f"{split:02d}"}
        assert all(v.path.is_file() for v in (*index.train, *index.test))  # HandStandPushups/
        assert {v.path.parent.name for v in index.test} == set(index.classes)
        assert [v.label for v in index.test] == [0, 0, 1, 1]
    assert load_index(official_ucf).name == "ucf101"  # detected


def write_ucf_lists(
    root, classes="1 Walk\n", train="Walk/v_Walk_g01_c01.avi 1\n", test="Walk/v_Walk_g02_c01.avi\n"
):
    """A text-only UCF101 layout: enough to index, nothing to decode."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text(classes)
    (lists / "trainlist01.txt").write_text(train)
    (lists / "testlist01.txt").write_text(test)
    return f"ucf101:{root}"


@pytest.mark.parametrize(
    "files, split, message",
    [
        (dict(), 2, "trainlist02.txt is missing"),
        (dict(classes=""), 1, "names no classes"),
        (dict(train="\n"), 1, "trainlist01.txt lists no videos"),
        (dict(train="Run/v_Run_g01_c01.avi 1\n"), 1, "'Run/v_Run_g01_c01.avi' is not in classInd"),
    ],
)
def test_ucf101_layout_errors(tmp_path, files, split, message) -> None:
    spec = write_ucf_lists(tmp_path, **files)
    with pytest.raises(DataError, match=message):
        load_index(spec, split)


def test_hmdb51_flags_names_and_groups(official_hmdb) -> None:
    index = load_index(f"hmdb51:{official_hmdb}")
    assert index.name == "hmdb51" and index.classes == ("brush_hair", "cartwheel")
    assert index.video_dir == official_hmdb / "hmdb51_org"  # one folder below the root
    names = {s: [v.path.name for v in getattr(index, s)] for s in ("train", "test", "unused")}
    assert names["train"] == [
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
        "April_09_brush_hair_u_nm_np1_ba_goo_1.avi",
        "#122_Cleaning_brush_hair_f_nm_np1_ri_bad_0.avi",
        "Bart_&_Lisa_cartwheel_f_cm_np2_ri_med_0.avi",
        "Bart_&_Lisa_cartwheel_f_cm_np2_ri_med_1.avi",
        "Don't_Stop;_Me,Now_cartwheel_f_cm_np1_le_bad_0.avi",
        "Short_(clip)_cartwheel_f_nm_np1_fr_goo_0.avi",
    ]
    assert len(names["test"]) == 4 and "Brushing_Hair_with_Beth!_" in names["test"][0]
    assert names["unused"] == ["Aussie_Girl_(long)_brush_hair_u_cm_np1_fr_med_0.avi"]
    assert [v.label for v in index.train] == [0, 0, 0, 1, 1, 1, 1]
    assert [v.group for v in index.train[:2]] == ["April_09_brush_hair"] * 2  # one source clip
    assert index.train[3].group == index.train[4].group == "Bart_&_Lisa_cartwheel"
    split2 = load_index(official_hmdb, 2)  # detected; split 2 swaps train and test
    assert {v.path for v in split2.train} == {v.path for v in index.test}
    assert split2.unused == index.unused


def test_hmdb51_layout_errors(official_hmdb, tmp_path) -> None:
    with pytest.raises(ConfigError, match="splits 1, 2 and 3"):  # a usage mistake: exit 2
        load_index(f"hmdb51:{official_hmdb}", 0)
    with pytest.raises(ConfigError, match="splits 1, 2 and 3"):
        load_index(f"ucf101:{official_hmdb}", 4)
    with pytest.raises(DataError, match="_test_split3.txt files"):
        load_index(f"hmdb51:{official_hmdb}", 3)
    lists = tmp_path / "testTrainMulti_7030_splits"
    lists.mkdir()
    (lists / "jump_test_split1.txt").write_text("a_jump_f_nm_np1_fr_goo_0.avi 1\n")
    with pytest.raises(DataError, match=r"no class folder \(e.g. jump/\)"):
        load_index(f"hmdb51:{tmp_path}")
    (tmp_path / "jump").mkdir()
    with pytest.raises(DataError, match="list no training or test videos"):
        load_index(f"hmdb51:{tmp_path}")
    (lists / "jump_test_split1.txt").write_text("a.avi 1\nb.avi 3\n")
    with pytest.raises(DataError, match=r"jump_test_split1.txt:2: expected"):
        load_index(f"hmdb51:{tmp_path}")
    for cls in ("sword_exercise", "sword"):  # the files sort the other way round
        (lists / f"{cls}_test_split1.txt").write_text(f"{cls}_1.avi 1\n{cls}_2.avi 2\n")
    (lists / "jump_test_split1.txt").unlink()
    (tmp_path / "jump").rename(tmp_path / "sword")
    index = load_index(f"hmdb51:{tmp_path}")
    assert index.classes == ("sword", "sword_exercise")
    assert [(v.path.name, v.label) for v in index.train] == [
        ("sword_1.avi", 0),
        ("sword_exercise_1.avi", 1),
    ]


def test_csv_list(csv_list, tmp_path) -> None:
    index = load_index(f"csv:{csv_list}")
    assert index.name == "csv" and index.classes == ("run", "walk")
    assert len(index.train) == 7 and len(index.test) == 2
    assert all(v.path.is_file() for v in index.test)  # an absolute path, a relative one
    assert index.train[-1].path.name == "broken.avi" and index.train[-1].label == 0
    assert index.train[0].group == "clips/run/run0.avi"  # no group column: its own group
    assert load_index(csv_list).name == "csv"  # detected by the suffix
    grouped = tmp_path / "grouped.csv"
    grouped.write_text("path,label,split,group\na.mp4,x,train,g1\nb.mp4,x,TRAIN,g1\n")
    assert [v.group for v in load_index(grouped).train] == ["g1", "g1"]
    for text, message in [
        ("file,class\na.mp4,x\n", "expected a header"),
        ("path,label,split\na.mp4,x,val\n", r"grouped.csv:2: expected"),
        ("path,label\na.mp4,\n", r"grouped.csv:2: expected"),
        ("path,label,split\na.mp4,x,test\n", "lists no training videos"),
    ]:
        grouped.write_text(text)
        with pytest.raises(DataError, match=message):
            load_index(f"csv:{grouped}")
    with pytest.raises(ConfigError, match="one split"):
        load_index(csv_list, 2)
    with pytest.raises(DataError, match="is not a file"):
        load_index(f"csv:{tmp_path}/none.csv")


def test_a_csv_header_is_read_as_people_write_it(tmp_path) -> None:
    """A byte-order mark (Excel's "CSV UTF-8"), capitalised names, blanks after commas."""
    path = tmp_path / "list.csv"
    path.write_bytes(
        "\ufeffPath, Label, Split\r\na.mp4, walk, train\r\nb.mp4, run, TEST\r\n".encode()
    )
    index = load_index(path)
    assert index.classes == ("run", "walk")
    assert [(v.path.name, v.label) for v in index.train] == [("a.mp4", 1)]
    assert [v.path.name for v in index.test] == ["b.mp4"]
    path.write_text("path,label\n\na.mp4,walk\nb.mp4,\n")  # a blank line before the bad one
    with pytest.raises(DataError, match=r"list.csv:4: expected a path, a label"):
        load_index(path)
    path.write_text("path,label\na.mp4,walk\n" + "x" * 200_000 + ",walk\n")
    with pytest.raises(DataError, match=r"list.csv:3: field larger than field limit"):
        load_index(path)


def latin1(text: str) -> bytes:
    return text.encode("latin-1")


@pytest.mark.parametrize("layout", ["ucf101 list", "ucf101 classes", "hmdb51", "csv"])
def test_a_list_file_not_in_utf8_names_the_file_and_line(layout, tmp_path) -> None:
    if layout.startswith("ucf101"):
        spec = write_ucf_lists(tmp_path, train="Walk/v_Walk_g01_c01.avi 1\n" * 3)
        name = "trainlist01.txt" if layout == "ucf101 list" else "classInd.txt"
        path = tmp_path / "ucfTrainTestlist" / name
        path.write_bytes(path.read_bytes() + latin1("Walk/caf\xe9.avi 1\n"))
        line = 4 if name == "trainlist01.txt" else 2
    elif layout == "hmdb51":
        (tmp_path / "jump").mkdir()
        path = tmp_path / "testTrainMulti_7030_splits" / "jump_test_split1.txt"
        path.parent.mkdir()
        path.write_bytes(latin1("a.avi 1\nb.avi 2\nSa\xefd_jump.avi 1\n"))
        spec, line = f"hmdb51:{tmp_path}", 3
    else:
        path = tmp_path / "list.csv"
        path.write_bytes(latin1("path,label\na.mp4,caf\xe9\n"))
        spec, line = f"csv:{path}", 2
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:{line}: not UTF-8 text \(byte"):
        load_index(spec)


def test_ucf101_lists_with_a_byte_order_mark(tmp_path) -> None:
    spec = write_ucf_lists(
        tmp_path, classes="\ufeff1 Walk\n", train="\ufeffWalk/v_Walk_g01_c01.avi 1\n"
    )
    index = load_index(spec)
    assert index.classes == ("Walk",) and index.train[0].path.name == "v_Walk_g01_c01.avi"


@pytest.mark.parametrize("layout", ["official_ucf", "official_hmdb"])
def test_validation_split_keeps_groups_whole(layout, request) -> None:
    index = load_index(request.getfixturevalue(layout))
    for seed in range(5):
        train, val = split_by_group(index.train, 0.3, seed)
        assert val and len(train) + len(val) == len(index.train)
        assert not {(v.label, v.group) for v in train} & {(v.label, v.group) for v in val}
        assert len({(v.label, v.group) for v in index.train}) < len(index.train)  # real groups
