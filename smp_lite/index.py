"""The dataset index: which videos, which labels, which split.

`load_index(spec)` reads one of four layouts into a `DatasetIndex`: the generated dataset
(UCF101's list layout), UCF101 (classInd.txt and the split lists), HMDB51 (the
testTrainMulti_7030_splits files) and a generic CSV list (path,label[,split][,group]). A list
that cannot be read ends in one `DataError` line naming the file and the line.
`split_by_group` holds out whole groups for validation.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, DataError, MissingPath


@dataclass(frozen=True)
class Video:
    path: Path
    label: int  # 0-based class index
    group: str  # videos of one group (UCF101's gGG) never straddle train and validation


@dataclass(frozen=True)
class DatasetIndex:
    name: str
    root: Path
    classes: tuple[str, ...]
    train: tuple[Video, ...]
    test: tuple[Video, ...]
    video_dir: Path | None  # the folder the lists cover (others in it: "unlisted"); csv: none
    unused: tuple[Video, ...] = ()  # listed in neither split (HMDB51's flag 0)


DATASET_KINDS = ("synth", "ucf101", "hmdb51", "csv")
OFFICIAL_SPLITS = (1, 2, 3)
UCF_GROUP = re.compile(r"_g(\d+)_c\d+", re.IGNORECASE)
# HMDB51 names end in meta tags: body part, camera motion, persons, viewpoint, quality, clip
HMDB_TAGS = re.compile(r"_[a-z]_[a-z]{2}_np\d+_[a-z]{2}_[a-z]{3}_\d+$", re.IGNORECASE)
HMDB_SPLITS = "testTrainMulti_7030_splits"


def load_index(spec: str | Path, split: int = 1) -> DatasetIndex:
    """Index a dataset given as `[kind:]PATH`, kind one of DATASET_KINDS (else auto-detected).

    - synth:  PATH/videos/<Class>/*.mp4 with classInd.txt, trainlist0N.txt, testlist0N.txt in PATH
    - ucf101: PATH/UCF-101/<Class>/v_<Class>_gGG_cCC.avi (or PATH/<Class>/...) and the official
              PATH/ucfTrainTestlist/; class folders are matched case-insensitively
    - hmdb51: PATH/testTrainMulti_7030_splits/<class>_test_splitN.txt and the videos in
              PATH/<class>/<name>.avi or one folder deeper (PATH/hmdb51_org/<class>/...)
    - csv:    a CSV file with header path,label[,split][,group] (see read_csv_list)
    """
    kind, sep, rest = str(spec).partition(":")
    if not (sep and kind in DATASET_KINDS):
        kind, rest = "", str(spec)
    path = Path(rest).expanduser()
    if not kind:
        kind = detect_kind(path)
    if kind == "csv":
        if not path.is_file():
            raise MissingPath(f"video list {path} does not exist or is not a file", path)
        if split != 1:
            raise ConfigError(f"{path}: a csv list has one split, got split {split}")
        return read_csv_list(path)
    if not path.is_dir():
        raise MissingPath(f"data root {path} does not exist or is not a folder", path)
    if kind in ("ucf101", "hmdb51") and split not in OFFICIAL_SPLITS:
        raise ConfigError(f"{kind} has splits 1, 2 and 3, got split {split} for {path}")
    if kind == "synth":
        return read_ucf_layout("synth", path, path / "videos", path, split)
    if kind == "hmdb51":
        return read_hmdb_layout(path, split)
    video_dir = path / "UCF-101" if (path / "UCF-101").is_dir() else path
    return read_ucf_layout("ucf101", path, video_dir, path / "ucfTrainTestlist", split)


def detect_kind(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        return "csv"
    if (path / "videos").is_dir() and (path / "classInd.txt").is_file():
        return "synth"
    return "hmdb51" if (path / HMDB_SPLITS).is_dir() else "ucf101"


def case_insensitive_paths(base: Path) -> Callable[[str], Path]:
    """A function rel -> base/rel where each part of rel absent as written is matched to an
    entry of another case (UCF101's lists say HandStandPushups, its folder HandstandPushups)."""
    listings: dict[Path, dict[str, str]] = {}

    def resolve(rel: str) -> Path:
        path = base
        for part in rel.split("/"):
            if not (path / part).exists():
                if path not in listings:
                    entries = path.iterdir() if path.is_dir() else ()
                    listings[path] = {p.name.lower(): p.name for p in entries}
                part = listings[path].get(part.lower(), part)
            path = path / part
        return path

    return resolve


def read_ucf_layout(
    name: str, root: Path, video_dir: Path, list_dir: Path, split: int
) -> DatasetIndex:
    """UCF101's list format: classInd.txt, trainlist0N.txt (`path label`), testlist0N.txt."""
    class_file = list_dir / "classInd.txt"
    lists = [list_dir / f"trainlist0{split}.txt", list_dir / f"testlist0{split}.txt"]
    for f in (class_file, *lists):
        if not f.is_file():
            raise DataError(f"{f} is missing: expected the UCF101 list layout under {list_dir}")
    classes = [line.split()[-1] for line in read_list_text(class_file).splitlines() if line.strip()]
    if not classes:
        raise DataError(f"{class_file} names no classes")
    label_of = {c.lower(): i for i, c in enumerate(classes)}
    resolve = case_insensitive_paths(video_dir)

    def read_list(path: Path) -> tuple[Video, ...]:
        videos = []
        for line in read_list_text(path).splitlines():
            if not line.strip():
                continue
            rel = line.split()[0]
            cls = rel.split("/")[0].lower()
            if cls not in label_of:
                raise DataError(f"{path}: class folder of {rel!r} is not in {class_file.name}")
            group = UCF_GROUP.search(rel)
            videos.append(
                Video(resolve(rel), label_of[cls], group.group(1) if group else Path(rel).stem)
            )
        if not videos:
            raise DataError(f"{path} lists no videos")
        return tuple(videos)

    train, test = read_list(lists[0]), read_list(lists[1])
    return DatasetIndex(name, root, tuple(classes), train, test, video_dir)


def read_hmdb_layout(root: Path, split: int) -> DatasetIndex:
    """HMDB51's split files: `<name>.avi <flag>` per line, flag 1 train, 2 test, 0 unused.

    HMDB51 has no groups; a video's group is its source clip, the name without the trailing
    meta tags (`April_09_brush_hair` of `April_09_brush_hair_u_nm_np1_ba_goo_0.avi`), so the
    cuts of one source clip stay together; a name without the tags is its own group."""
    list_dir = root / HMDB_SPLITS
    suffix = f"_test_split{split}.txt"
    split_files = list(list_dir.glob(f"*{suffix}")) if list_dir.is_dir() else []
    if not split_files:
        raise DataError(f"no <class>{suffix} files in {list_dir}: expected the HMDB51 layout")
    # sort the names, not the files: sword < sword_exercise but sword_e... < sword_t...
    classes = tuple(sorted(f.name[: -len(suffix)] for f in split_files))
    # the class folders lie in root or one level below it (e.g. root/hmdb51_org/<class>/)
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir() and p != list_dir)]
    video_dir = next((d for d in candidates if any((d / c).is_dir() for c in classes)), None)
    if video_dir is None:
        raise DataError(f"no class folder (e.g. {classes[0]}/) in {root} or one level below")
    resolve = case_insensitive_paths(video_dir)
    by_flag: dict[str, list[Video]] = {"0": [], "1": [], "2": []}
    for label, cls in enumerate(classes):
        split_file = list_dir / f"{cls}{suffix}"
        for number, line in enumerate(read_list_text(split_file).splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.rsplit(maxsplit=1)  # names may hold any character but the last blank
            if len(fields) != 2 or fields[1] not in by_flag:
                raise DataError(f"{split_file}:{number}: expected '<name>.avi <0|1|2>': {line!r}")
            name = fields[0].strip()
            group = HMDB_TAGS.sub("", Path(name).stem)
            by_flag[fields[1]].append(Video(resolve(f"{cls}/{name}"), label, group))
    if not by_flag["1"] or not by_flag["2"]:
        raise DataError(f"the split {split} files in {list_dir} list no training or test videos")
    train, test, unused = (tuple(by_flag[f]) for f in "120")
    return DatasetIndex("hmdb51", root, classes, train, test, video_dir, unused)


def read_list_text(path: Path) -> str:
    """A list file read as UTF-8 (a byte-order mark dropped); a file in another encoding ends
    in an error naming the file and the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}): save the list as UTF-8"
        ) from None


def read_csv_list(path: Path) -> DatasetIndex:
    """A generic list: `path,label[,split][,group]` with a header; path relative to the CSV's
    folder or absolute, label a class name (classes sorted), split train (default) or test,
    group default the path (every video its own group). Header names are matched without case
    or blanks; a blank after a comma is dropped."""
    text = io.StringIO(read_list_text(path), newline="")
    reader = csv.DictReader(text, skipinitialspace=True)
    try:
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or ()]
        if not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected a header path,label[,split][,group]")
        rows = []
        for row in reader:
            row = {k: (v or "").strip() for k, v in row.items() if k}
            row["split"] = (row.get("split") or "train").lower()
            if not (row["path"] and row["label"] and row["split"] in ("train", "test")):
                raise DataError(
                    f"{path}:{reader.line_num}: expected a path, a label, split train or test"
                )
            rows.append(row)
    except csv.Error as err:
        raise DataError(f"{path}:{reader.reader.line_num}: {err}") from None  # the line read
    classes = tuple(sorted({row["label"] for row in rows}))
    label_of = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[Video]] = {"train": [], "test": []}
    for row in rows:
        group = row.get("group") or row["path"]
        splits[row["split"]].append(Video(path.parent / row["path"], label_of[row["label"]], group))
    if not splits["train"]:
        raise DataError(f"{path} lists no training videos")
    train, test = tuple(splits["train"]), tuple(splits["test"])
    return DatasetIndex("csv", path.parent, classes, train, test, None)  # any subset of a folder


def split_by_group(
    videos: tuple[Video, ...], val_fraction: float, seed: int
) -> tuple[tuple[Video, ...], tuple[Video, ...]]:
    """Hold out whole groups, across every class, for validation: the original split by clip
    and leaked (method.md 7), and a UCF101 group number (like a generated dataset's) names one
    look and camera shared by all its classes."""
    groups = sorted({v.group for v in videos})
    rng = random.Random(seed)
    rng.shuffle(groups)
    n_val = max(1, round(val_fraction * len(groups))) if val_fraction > 0 else 0
    held = set(groups[:n_val])
    train = tuple(v for v in videos if v.group not in held)
    val = tuple(v for v in videos if v.group in held)
    return train, val
