"""Where a PRP sample's loading time goes: the whole `VideoDataset` item against reading the
frames alone (opening the file, decoding the frames the sample needs, resizing them), and
against decoding every frame of the span at the video's size as the original code did.

    python benchmarks/loader_breakdown.py --data data/synth --videos 64 --rates 1,8
"""

from __future__ import annotations

import argparse
import time

import torch  # noqa: F401  (loaded before decord, below)

# isort: split
import decord  # after torch: decord's CUDA NVBLAS would take over torch's CPU BLAS and crash

from smp_lite.data import VideoDataset, open_video, read_frames, sample_dilated_clip
from smp_lite.index import load_index


def row(videos: tuple, rate: int, size: tuple[int, int], crop: int) -> list[float]:
    """Milliseconds per video of each of the four ways of reading a rate-`rate` sample."""
    ds = VideoDataset(videos, mode="prp", resize=size, crop=crop, rates=(rate,))
    span, times = 16 * rate, []
    t0 = time.perf_counter()
    for i in range(len(videos)):
        ds[(i, 0)]
    times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i, video in enumerate(videos):
        reader = open_video(video.path)
        ids = sample_dilated_clip(len(reader), rate, 16, i % (len(reader) - span))
        read_frames(reader, sorted({*ids.target.tolist(), *ids.dpau.ravel().tolist()}), size)
    times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for video in videos:
        len(open_video(video.path))
    times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i, video in enumerate(videos):
        reader = decord.VideoReader(str(video.path), num_threads=1)
        start = i % (len(reader) - span)
        reader.get_batch(list(range(start, start + span + 1))).asnumpy()
    times.append(time.perf_counter() - t0)
    return [1000 * t / len(videos) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synth")
    parser.add_argument("--videos", type=int, default=64, help="training videos timed")
    parser.add_argument("--rates", default="1,8")
    parser.add_argument("--size", default="48x64", help="decoded frame size HxW")
    parser.add_argument("--crop", type=int, default=48)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    videos = load_index(args.data).train[: args.videos]
    print(
        "| rate | whole item, ms | open, decode and resize the frames it needs, ms | "
        "of which open, ms | open + decode every frame at the video's size, ms |\n"
        "|---|---|---|---|---|"
    )
    for rate in map(int, args.rates.split(",")):
        cells = row(videos, rate, size, args.crop)
        print(f"| {rate} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
