"""Dataset check: index a dataset and find the flaws of its files before a run meets them.

`check_dataset` returns a report (a JSON-ready dict); `format_report` turns it into the summary
`smp-lite data check` prints. Problems are reported, not fatal: training skips undecodable and
too-short videos and counts them (data.py); a video too short for some rates serves the rates
it fits, and its samples at the others go to longer videos.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ..config import RATES
from ..data import allowed_rates, open_video, silence_stderr
from ..index import DatasetIndex, load_index

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")
SHOWN = 10  # names per problem in the printed summary; the JSON report has them all


def probe_video(path: Path) -> tuple[int, str]:
    """(frame count, "") if the video opens and its last frame decodes, else (0, the error)."""
    stage = "cannot open"
    try:
        reader = open_video(path)
        num_frames = len(reader)
        if num_frames == 0:
            return 0, "no frames"
        stage = f"last frame ({num_frames - 1}) does not decode"
        reader[num_frames - 1].asnumpy()
        return num_frames, ""
    except Exception as err:  # decord raises RuntimeError, DECORDError or worse on broken files
        lines = str(err).replace(str(path), "file").strip().splitlines()
        return 0, f"{stage}: {lines[-1][:200] if lines else type(err).__name__}"


def probe_all(paths: list[Path], workers: int, progress: bool) -> list[tuple[int, str]]:
    """probe_video of each path, in `workers` processes (at least one) whose stderr goes nowhere:
    the report says why each video failed, without decord's native lines."""
    bar = dict(total=len(paths), desc="decoding", unit="video", disable=not progress)
    with ProcessPoolExecutor(max(1, workers), initializer=silence_stderr) as pool:
        return list(tqdm(pool.map(probe_video, paths, chunksize=4), **bar))


def check_dataset(
    spec: str | Path,
    split: int = 1,
    workers: int | None = None,
    clip_len: int = 16,
    progress: bool = True,
) -> dict:
    """Index `spec` (`kind:PATH`, as load_index) and decode every listed video's last frame.

    Raises DataError when the layout itself is wrong. The report lists the videos listed but
    missing, present under the video folder but unlisted, undecodable, and too short for the
    highest playback rate (with the rates they still allow); `usable` says whether any training
    video can be sampled at all."""
    index = load_index(spec, split)
    listed = [*index.train, *index.test]
    present = [v for v in listed if v.path.is_file()]
    probes = probe_all([v.path for v in present], workers or os.cpu_count() or 1, progress)
    frames = {v.path: n for v, (n, _) in zip(present, probes, strict=True)}
    max_rate_frames = clip_len * max(RATES) + 1
    too_short = []
    for path, n in frames.items():
        if 0 < n < max_rate_frames:
            rates = allowed_rates(n, clip_len)
            effect = f"fits rates {rates} only" if rates else "skipped in training"
            too_short.append({"path": str(path), "frames": n, "rates": rates, "effect": effect})
    usable = sum(frames.get(v.path, 0) > clip_len for v in index.train)
    return {
        "dataset": index.name,
        "root": str(index.root),
        "split": split,
        "classes": list(index.classes),
        "videos": {"train": len(index.train), "test": len(index.test), "unused": len(index.unused)},
        "videos_per_class": per_class_counts(index),
        "usable_train_videos": usable,
        "usable": usable > 0,
        "missing": [str(v.path) for v in listed if not v.path.is_file()],
        "unlisted": [str(p) for p in unlisted_videos(index)],
        "undecodable": [
            {"path": str(v.path), "error": error}
            for v, (_, error) in zip(present, probes, strict=True)
            if error
        ],
        "too_short": too_short,
        "min_frames": {"any_rate": clip_len + 1, "rate_8": max_rate_frames},
    }


def per_class_counts(index: DatasetIndex) -> dict[str, dict[str, int]]:
    counts = {c: {"train": 0, "test": 0} for c in index.classes}
    for split in ("train", "test"):
        for video in getattr(index, split):
            counts[index.classes[video.label]][split] += 1
    return counts


def unlisted_videos(index: DatasetIndex) -> list[Path]:
    """Video files under the dataset's video folder that no list (of any flag) names; none for a
    CSV list, which covers no folder (it may name any subset of the videos beside it)."""
    if index.video_dir is None:
        return []
    listed = {v.path for v in (*index.train, *index.test, *index.unused)}
    on_disk = (p for p in index.video_dir.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    return sorted(p for p in on_disk if p not in listed and p.is_file())


def format_report(report: dict) -> str:
    """A few lines of summary and the first names of every problem."""
    root = Path(report["root"])

    def name(path: str) -> str:
        return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path

    videos = report["videos"]
    unused = f", {videos['unused']} unused" if videos["unused"] else ""
    lines = [
        f"{report['dataset']} at {root}, split {report['split']}: {len(report['classes'])} "
        f"classes, {videos['train']} train and {videos['test']} test videos{unused}",
    ]
    per_class = report["videos_per_class"].values()
    if per_class:
        fewest = min(c["train"] for c in per_class)
        lines.append(f"training videos per class: {fewest} to {max(c['train'] for c in per_class)}")
    need = report["min_frames"]
    problems = [
        ("listed but missing", report["missing"], name),
        ("on disk but unlisted (ignored)", report["unlisted"], name),
        (
            "undecodable (skipped in training)",
            report["undecodable"],
            lambda e: f"{name(e['path'])}: {e['error']}",
        ),
        (
            f"too short for rate 8 (< {need['rate_8']} frames; < {need['any_rate']}: unusable)",
            report["too_short"],
            lambda e: f"{name(e['path'])}: {e['frames']} frames, {e['effect']}",
        ),
    ]
    for title, items, show in problems:
        lines.append(f"{title}: {len(items)}")
        lines += [f"  {show(item)}" for item in items[:SHOWN]]
        if len(items) > SHOWN:
            lines.append(f"  ... and {len(items) - SHOWN} more (see --json)")
    verdict = "usable" if report["usable"] else "NOT usable: no training video can be read"
    lines.append(f"{report['usable_train_videos']} training videos can be sampled: {verdict}")
    return "\n".join(lines)
