"""Shared fixtures: small real videos written with PyAV, in the synth, UCF101, HMDB51 and csv
layouts; the official layouts carry the flaws real downloads have (see official_* fixtures)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import tiny_config
from video_files import distinct_frames, write_ucf_layout

from smp_lite.tools.synth import synthesize
from smp_lite.train import train

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory) -> Path:
    """The generated dataset's tiny preset: 48 videos of 129 frames (every rate fits a 16-frame
    clip). Read only: a test that changes it makes its own."""
    return synthesize(tmp_path_factory.mktemp("synth") / "synth-tiny", "tiny", progress=False)


@pytest.fixture(scope="session")
def ucf_tiny(tmp_path_factory) -> Path:
    """Two classes, four train groups and one test group, 140 frames each (rate 8 possible)."""
    root = tmp_path_factory.mktemp("ucf_tiny")
    return write_ucf_layout(root, ["Left", "Right"], {"train": [2, 3, 4, 5], "test": [1]})


def write_avi(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    """MPEG-4 part 2 in AVI, the codec and container UCF101 and HMDB51 ship in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes())


@pytest.fixture(scope="session")
def official_ucf(tmp_path_factory) -> Path:
    """UCF-101/<Class>/v_<Class>_gGG_cCC.avi, groups 1-4 with two clips each, and the official
    ucfTrainTestlist/ for splits 1-3 (split N tests group N). As in the real lists, they spell
    a class folder HandStandPushups where the folder is HandstandPushups."""
    root = tmp_path_factory.mktemp("ucf101")
    classes = {"ApplyEyeMakeup": "ApplyEyeMakeup", "HandstandPushups": "HandStandPushups"}
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    for k, (folder, spelled) in enumerate(classes.items()):
        for g in range(1, 5):
            for c in (1, 2):
                frames = distinct_frames(140, seed=100 * k + 10 * g + c)
                write_avi(root / "UCF-101" / folder / f"v_{spelled}_g{g:02d}_c{c:02d}.avi", frames)
    for split in (1, 2, 3):
        train, test = [], []
        for label, spelled in enumerate(classes.values(), start=1):
            for g in range(1, 5):
                for c in (1, 2):
                    rel = f"{spelled}/v_{spelled}_g{g:02d}_c{c:02d}.avi"
                    if g == split:
                        test.append(rel)
                    else:
                        train.append(f"{rel} {label}")
        (lists / f"trainlist0{split}.txt").write_text("\n".join(train) + "\n")
        (lists / f"testlist0{split}.txt").write_text("\n".join(test) + "\n")
    return root


CORRUPT, MISSING = -1, 0  # frame counts in HMDB_VIDEOS that stand for a flawed file
HMDB_VIDEOS = {  # class: (name, flag in split 1, frames); split 2 swaps flags 1 and 2
    "brush_hair": [
        ("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 1, 140),
        ("April_09_brush_hair_u_nm_np1_ba_goo_1.avi", 1, 140),
        ("#122_Cleaning_brush_hair_f_nm_np1_ri_bad_0.avi", 1, CORRUPT),
        ("Brushing_Hair_with_Beth!_brush_hair_h_nm_np1_le_goo_0.avi", 2, 140),
        ("Aussie_Girl_(long)_brush_hair_u_cm_np1_fr_med_0.avi", 0, 140),
    ],
    "cartwheel": [
        ("Bart_&_Lisa_cartwheel_f_cm_np2_ri_med_0.avi", 1, 140),
        ("Bart_&_Lisa_cartwheel_f_cm_np2_ri_med_1.avi", 1, 140),
        ("Don't_Stop;_Me,Now_cartwheel_f_cm_np1_le_bad_0.avi", 1, 140),
        ("Short_(clip)_cartwheel_f_nm_np1_fr_goo_0.avi", 1, 10),
        ("Medium_cartwheel_f_cm_np1_fr_goo_0.avi", 2, 40),
        ("Jump_cartwheel_f_cm_np1_le_goo_0.avi", 2, 140),
        ("Gone#1_cartwheel_f_cm_np1_fr_med_0.avi", 2, MISSING),
    ],
}


@pytest.fixture(scope="session")
def official_hmdb(tmp_path_factory) -> Path:
    """hmdb51_org/<class>/<name>.avi with HMDB's odd names and testTrainMulti_7030_splits/ for
    splits 1 and 2; one corrupt, one 10-frame and one 40-frame file, one listed file absent,
    one file nobody lists (Extra_...) and a non-video file."""
    root = tmp_path_factory.mktemp("hmdb51")
    lists = root / "testTrainMulti_7030_splits"
    lists.mkdir()
    swap = {1: 2, 2: 1, 0: 0}
    for cls, videos in HMDB_VIDEOS.items():
        for i, (name, _, frames) in enumerate(videos):
            path = root / "hmdb51_org" / cls / name
            if frames == CORRUPT:
                write_corrupt(path)
            elif frames != MISSING:
                write_avi(path, distinct_frames(frames, seed=i))
        for split in (1, 2):
            # as in HMDB's files, every line ends in a blank
            lines = [f"{n} {f if split == 1 else swap[f]} " for n, f, _ in videos]
            (lists / f"{cls}_test_split{split}.txt").write_text("\n".join(lines) + "\n")
    write_avi(
        root / "hmdb51_org/cartwheel/Extra_cartwheel_f_cm_np1_fr_goo_0.avi", distinct_frames(20)
    )
    (root / "hmdb51_org/brush_hair/notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="session")
def csv_list(tmp_path_factory) -> Path:
    """list.csv (path,label,split) over clips/<label>/*.avi: three train and one test video per
    class, one test path absolute, and a corrupt training video."""
    root = tmp_path_factory.mktemp("csv")
    rows = ["path,label,split"]
    for label in ("run", "walk"):
        for i in range(4):
            rel = f"clips/{label}/{label}{i}.avi"
            write_avi(root / rel, distinct_frames(140, seed=i + 5 * len(label)))
            rows.append(f"{root / rel},{label},test" if i == 3 else f"{rel},{label},train")
    write_corrupt(root / "clips/run/broken.avi")
    rows.append("clips/run/broken.avi,run,")  # an empty split means train
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv"


@pytest.fixture(scope="session")
def pretrained(ucf_tiny, tmp_path_factory) -> Path:
    """A tiny SMP run's last.pt (r3d10, one epoch on ucf_tiny)."""
    out = tmp_path_factory.mktemp("runs") / "smp"
    train(tiny_config(ucf_tiny, out, epochs=1), progress=False)
    return out / "last.pt"
