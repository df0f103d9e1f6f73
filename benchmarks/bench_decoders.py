"""Benchmark and check the installed `decord` module against PyAV.

`decord` 0.6.0, `decord2` and `eva-decord` all install the module `decord`, so run this script
once in an environment per distribution (it needs only numpy, av and one of them):

    python benchmarks/bench_decoders.py [--repeats N]

It writes two test videos with PyAV (H.264 .mp4 like the generated dataset, MPEG-4 Part 2 .avi
like UCF101), then prints Markdown tables:

1. speed of the playback-rate-perception (PRP) access pattern of `smp_lite.data.VideoDataset`:
   open a reader, decode the union of the target frames (every s/2-th frame over 16*s frames;
   16 consecutive ones for s=1) and the DPAU frames, resized on decode to 171x128, versus
   seeking with PyAV, decoding the span sequentially and resizing the wanted frames;
2. the cost of opening a reader, and peak-memory growth over many samples;
3. frame accuracy of `get_batch` at arbitrary indices, at native size, against a sequential
   PyAV decode of the whole file, on one reader seeking back and forth, for those two videos
   and two MPEG-4 Part 2 files with B-frames (.avi and .mp4);
4. what happens on truncated and random-bytes files.

Checks 3 and 4 run each decode in a fresh process with a timeout, so that a hang or a crash in
native code is reported rather than stopping the script.
"""

import argparse
import importlib.metadata
import multiprocessing
import queue
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from multiprocessing.queues import Queue
from pathlib import Path

import av
import decord
import numpy as np

RATES = (1, 2, 4, 8)
CLIP_LEN = 16
DPAU_OFFSETS = np.array([0, 5, 10, 15])  # frames differenced per chunk of CLIP_LEN frames
RESIZE = (128, 171)  # (height, width), as smp_lite's VideoDataset resizes on decode

Decoder = Callable[[Path, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TestVideo:
    name: str
    path: Path
    num_frames: int


def distribution() -> str:
    """Which installed distribution provides the `decord` module, with its version."""
    names = importlib.metadata.packages_distributions().get("decord", [])
    found = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)
    return f"{found or 'unknown'} (decord.__version__ {decord.__version__})"


def synthetic_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(N, H, W, 3) uint8: a blocky texture panning smoothly, with a bar that grows with the
    frame number, so that every frame differs from all the others."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    texture = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        frames[i] = np.roll(texture, (i, 2 * i), axis=(0, 1))
        frames[i, :6, : (i * width) // num_frames] = 255
    return frames


def write_video(
    path: Path,
    codec: str,
    frames: np.ndarray,
    gop: int,
    b_frames: int | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """Encode `frames` at 25 fps, yuv420p, a keyframe at least every `gop` frames, at most
    `b_frames` B-frames in a row (None: the encoder's default)."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        if b_frames is not None:
            stream.codec_context.max_b_frames = b_frames
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def make_videos(folder: Path) -> list[TestVideo]:
    """(a) H.264 .mp4 120x160 like the generated dataset; (b) MPEG-4 Part 2 .avi 240x320 like
    UCF101's xvid files."""
    h264 = folder / "h264_160x120.mp4"
    write_video(h264, "libx264", synthetic_frames(144, 120, 160, seed=1), gop=25)
    mpeg4 = folder / "mpeg4_320x240.avi"
    write_video(mpeg4, "mpeg4", synthetic_frames(180, 240, 320, seed=2), gop=12)
    return [TestVideo("h264 mp4 160x120", h264, 144), TestVideo("mpeg4 avi 320x240", mpeg4, 180)]


def make_b_frame_videos(folder: Path) -> list[TestVideo]:
    """MPEG-4 Part 2 with B-frames (as xvid/DivX Advanced Simple Profile files have) in .avi,
    which stores no presentation timestamps, and in .mp4: for the accuracy check only."""
    frames = synthetic_frames(180, 240, 320, seed=3)
    videos = []
    for suffix in ("avi", "mp4"):
        path = folder / f"mpeg4_bframes.{suffix}"
        write_video(path, "mpeg4", frames, gop=12, b_frames=2)
        videos.append(TestVideo(f"mpeg4 {suffix} 320x240 B-frames", path, len(frames)))
    return videos


def decode_all(path: Path) -> np.ndarray:
    """Every frame at native size, decoded sequentially from the start with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def prp_indices(start: int, rate: int) -> np.ndarray:
    """The sorted, unique frames a PRP sample at `rate` from `start` decodes (as in
    `smp_lite.data.sample_dilated_clip`): target frames plus DPAU frames."""
    if rate == 1:
        target = start + np.arange(CLIP_LEN)
    else:
        target = start + rate // 2 * np.arange(2 * CLIP_LEN)
    dpau = start + CLIP_LEN * np.arange(rate)[:, None] + DPAU_OFFSETS[None, :]
    return np.union1d(target, dpau.ravel())


def decord_clip(path: Path, indices: np.ndarray) -> np.ndarray:
    """The dataset's way: a fresh reader that resizes on decode, one `get_batch`."""
    reader = decord.VideoReader(str(path), width=RESIZE[1], height=RESIZE[0], num_threads=1)
    return reader.get_batch(indices.tolist()).asnumpy()


def pyav_clip(path: Path, indices: np.ndarray, resize: bool = True) -> np.ndarray:
    """Seek to the keyframe before the first index, decode sequentially to the last one and
    convert (resized unless `resize` is False) the wanted frames."""
    size = {"height": RESIZE[0], "width": RESIZE[1]} if resize else {}
    wanted, last, frames = set(indices.tolist()), int(indices[-1]), []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        fps, base = Fraction(stream.average_rate), Fraction(stream.time_base)
        first_pts = stream.start_time or 0
        container.seek(first_pts + int(indices[0] / fps / base), stream=stream)
        for frame in container.decode(stream):
            index = round((frame.pts - first_pts) * base * fps)
            if index in wanted:
                frames.append(frame.to_ndarray(format="rgb24", **size))
            if index >= last:
                break
    if len(frames) != len(wanted):
        raise LookupError(f"found {len(frames)} of the {len(wanted)} frames by their timestamps")
    return np.stack(frames)


def random_starts(video: TestVideo, rate: int, count: int, rng: np.random.Generator) -> list[int]:
    """Starts as the dataset draws them: the sample needs frames start..start + 16 * rate."""
    return rng.integers(0, video.num_frames - CLIP_LEN * rate, size=count).tolist()


def time_interleaved(
    calls: dict[str, Callable[..., object]], arguments: list[tuple]
) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds (all threads) per call of each of `calls`, run in turn on each
    of `arguments`, so that noise from other work on the machine hits them alike; the first
    round only warms up."""
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for round_, args in enumerate(arguments):
        for name, call in calls.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            call(*args)
            if round_:
                wall[name].append(time.perf_counter() - wall_start)
                cpu[name].append(time.process_time() - cpu_start)
    return {name: (float(np.median(wall[name])), float(np.median(cpu[name]))) for name in calls}


def bench_clips(videos: list[TestVideo], repeats: int, rng: np.random.Generator) -> list[str]:
    decoders: dict[str, Decoder] = {"decord get_batch": decord_clip, "PyAV seek+decode": pyav_clip}
    rows = [
        "| decoder | video | rate | frames/clip | clips/s | ms/clip | CPU ms/clip |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for video in videos:
        for rate in RATES:
            starts = random_starts(video, rate, repeats + 1, rng)
            clips = [(video.path, prp_indices(start, rate)) for start in starts]
            for name, (wall, cpu) in time_interleaved(decoders, clips).items():
                rows.append(
                    f"| {name} | {video.name} | {rate} | {len(clips[0][1])} "
                    f"| {1 / wall:.0f} | {1000 * wall:.1f} | {1000 * cpu:.1f} |"
                )
    return rows


def open_decord(path: Path) -> int:
    return len(decord.VideoReader(str(path), width=RESIZE[1], height=RESIZE[0], num_threads=1))


def open_pyav(path: Path) -> int:
    with av.open(str(path)) as container:
        return container.streams.video[0].frames


def bench_open(videos: list[TestVideo], repeats: int) -> list[str]:
    rows = [
        "| video | decord VideoReader: ms (CPU ms) | PyAV av.open: ms (CPU ms) |",
        "|---|--:|--:|",
    ]
    openers = {"decord": open_decord, "pyav": open_pyav}
    for video in videos:
        times = time_interleaved(openers, [(video.path,)] * (repeats + 1))
        cells = [f"{1000 * wall:.2f} ({1000 * cpu:.2f})" for wall, cpu in times.values()]
        rows.append(f"| {video.name} | {' | '.join(cells)} |")
    return rows


def peak_rss_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def memory_growth(videos: list[TestVideo], samples: int, rng: np.random.Generator) -> list[str]:
    """Peak RSS after `samples` more dataset-style samples, once warm; no growth means no leak."""
    rows = [
        "| video | samples | peak RSS once warm (MiB) | growth after (MiB) |",
        "|---|--:|--:|--:|",
    ]
    for video in videos:
        starts = random_starts(video, 8, samples + 20, rng)
        for start in starts[:20]:
            decord_clip(video.path, prp_indices(start, 8))
        warm = peak_rss_mib()
        for start in starts[20:]:
            decord_clip(video.path, prp_indices(start, 8))
        rows.append(f"| {video.name} | {samples} | {warm:.0f} | {peak_rss_mib() - warm:.1f} |")
    return rows


def batch_of(reader: decord.VideoReader, indices: np.ndarray) -> np.ndarray:
    return reader.get_batch(indices.tolist()).asnumpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


class Tally:
    """Frames checked against a reference decode; a wrong frame is one nearer another reference
    frame than the one asked for, or one that could not be decoded."""

    def __init__(self, reference: np.ndarray) -> None:
        self.reference = reference
        self.flat = reference.reshape(len(reference), -1).astype(np.float32)
        self.checked = self.wrong = self.max_diff = 0
        self.offsets: set[int] = set()  # got - asked, of the wrong frames
        self.errors: set[str] = set()
        self.min_psnr = float("inf")  # of the right frames

    def nearest(self, frame: np.ndarray) -> int:
        f = frame.reshape(-1).astype(np.float32)
        return int(((self.flat**2).sum(1) - 2 * self.flat @ f).argmin())

    def add(self, batch: np.ndarray, decode: Callable[[np.ndarray], np.ndarray]) -> None:
        self.checked += len(batch)
        try:
            frames = decode(batch)
        except Exception as err:  # a failing decoder is a finding, not a reason to stop
            self.wrong += len(batch)
            self.errors.add(type(err).__name__)
            return
        for index, frame in zip(batch.tolist(), frames, strict=True):
            quality = psnr(frame, self.reference[index])
            if quality < 35 and (got := self.nearest(frame)) != index:  # 35 dB: neighbours ~20
                self.wrong += 1
                self.offsets.add(got - index)
                continue
            diff = np.abs(frame.astype(np.int16) - self.reference[index])
            self.max_diff = max(self.max_diff, int(diff.max()))
            self.min_psnr = min(self.min_psnr, quality)

    def row(self) -> str:
        spread = f"{min(self.offsets)}..{max(self.offsets)}" if self.offsets else ""
        return (
            f"{self.checked} | {self.wrong} | {spread} | {', '.join(sorted(self.errors))} "
            f"| {self.max_diff} | {self.min_psnr:.1f} |"
        )


def run_isolated(target: Callable[..., None], args: tuple, timeout: float) -> tuple[list, str]:
    """Run `target(*args, messages)` in a fresh process, so that a hang or crash in native code
    is a finding too. Returns what it put on `messages` before it ended (None, its last
    message, means it returned) and "" or how it failed; `timeout` restarts with each message."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    process = context.Process(target=target, args=(*args, messages))
    process.start()
    received: list = []
    failure = ""
    while not received or received[-1] is not None:
        try:
            received.append(messages.get(timeout=timeout))
        except queue.Empty:
            process.join(1)
            if process.exitcode is None:
                failure = f"hung: killed after {timeout:.0f} s without progress"
            else:
                failure = f"crashed: exit code {process.exitcode}"
            process.kill()
            break
    process.join()
    return [m for m in received if m is not None], failure


def accuracy_worker(
    path: Path, use_decord: bool, batches: list[np.ndarray], messages: Queue
) -> None:
    """Put a row of the tally after every batch, then None."""
    reference = decode_all(path)
    tally = Tally(reference)
    if use_decord:
        reader = decord.VideoReader(str(path), num_threads=1)
        length, decode = f"{len(reader)} of {len(reference)}", partial(batch_of, reader)
    else:  # the PyAV path decodes forward: it takes sorted indices
        length, decode = "", partial(pyav_clip, path, resize=False)
        batches = [np.sort(batch) for batch in batches]
    for batch in batches:
        tally.add(batch, decode)
        messages.put(f"{length} | {tally.row()}")
    messages.put(None)


def check_accuracy(
    videos: list[TestVideo], trials: int, timeout: float, rng: np.random.Generator
) -> list[str]:
    """Native-size frames from `get_batch` (one reader, random batches in random order, so it
    seeks back and forth) and from the PyAV seek path, against a sequential decode of the file."""
    rows = [
        "| decoder | video | len() | frames checked | wrong | got - asked | raised "
        "| max abs diff | min PSNR (dB) | outcome |",
        "|---|---|--:|--:|--:|--:|---|--:|--:|---|",
    ]
    for video in videos:
        batches = [rng.choice(video.num_frames, size=8, replace=False) for _ in range(trials)]
        for name, use_decord in (("decord get_batch", True), ("PyAV seek+decode", False)):
            done, failure = run_isolated(
                accuracy_worker, (video.path, use_decord, batches), timeout
            )
            tally = done[-1] if done else " | " * 7
            outcome = f"{failure} in batch {len(done) + 1} of {trials}" if failure else "ok"
            rows.append(f"| {name} | {video.name} | {tally} {outcome} |")
    return rows


def make_broken_files(
    videos: list[TestVideo], folder: Path, rng: np.random.Generator
) -> dict[str, Path]:
    """Valid files cut to half their size (moov at the end, at the front, and AVI), and noise."""
    faststart = folder / "h264_faststart.mp4"
    write_video(
        faststart,
        "libx264",
        synthetic_frames(144, 120, 160, seed=1),
        gop=25,
        options={"movflags": "faststart"},
    )
    broken: dict[str, Path] = {}
    for label, source in (
        ("mp4 (moov at end) cut to half", videos[0].path),
        ("mp4 (faststart) cut to half", faststart),
        ("avi cut to half", videos[1].path),
    ):
        data = source.read_bytes()
        target = folder / f"half_{source.name}"
        target.write_bytes(data[: len(data) // 2])
        broken[label] = target
    noise = folder / "noise.mp4"
    noise.write_bytes(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    broken["random bytes (.mp4)"] = noise
    return broken


def describe_error(err: Exception) -> str:
    """Its type, whether smp_lite's `except (RuntimeError, OSError, ValueError)` catches it, and
    its first line without decord's "[time] file:line:" prefixes."""
    caught = isinstance(err, (RuntimeError, OSError, ValueError))
    lines = [line for line in str(err).splitlines() if line.strip()] or [""]
    message = re.sub(r"\[[0-9:]+\] \S+:[0-9]+: ", "", lines[0])[:160]
    return f"{type(err).__name__}{'' if caught else ' (not a RuntimeError)'}: {message}"


def broken_worker(path: Path, messages: Queue) -> None:
    """Open as the dataset does and decode every frame; put what happened, then None."""
    try:
        reader = decord.VideoReader(str(path), width=RESIZE[1], height=RESIZE[0], num_threads=1)
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        repeats = int((frames[1:] == frames[:-1]).all(axis=(1, 2, 3)).sum())
        messages.put(
            f"no error: len={len(reader)}, decoded {len(frames)} frames, "
            f"{repeats} repeat their predecessor"
        )
    except Exception as err:  # the exception is the finding
        messages.put(describe_error(err))
    messages.put(None)


def check_broken(files: dict[str, Path], timeout: float) -> list[str]:
    rows = ["| file | outcome |", "|---|---|"]
    for label, path in files.items():
        done, failure = run_isolated(broken_worker, (path,), timeout)
        outcome = failure or done[-1]
        rows.append(f"| {label} | {outcome.replace('|', '/')} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=100, help="timed clips per row")
    parser.add_argument("--trials", type=int, default=40, help="random batches in the check")
    parser.add_argument("--samples", type=int, default=300, help="samples in the memory check")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60,
        help="seconds a checked decode may take before it is called hung",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    print(f"decord module from: {distribution()}; PyAV {av.__version__}; numpy {np.__version__}")
    print(f"python {sys.version.split()[0]} on {sys.platform}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        videos = make_videos(folder)
        sections = [
            ("Memory (dataset-style samples at rate 8)", memory_growth(videos, args.samples, rng)),
            (
                "Accuracy at native size",
                check_accuracy(
                    videos + make_b_frame_videos(folder), args.trials, args.timeout, rng
                ),
            ),
            (
                "Broken files (width=171, height=128, all frames)",
                check_broken(make_broken_files(videos, folder, rng), args.timeout),
            ),
            ("Opening a reader", bench_open(videos, args.repeats)),
            (
                f"PRP clips, resized to {RESIZE[1]}x{RESIZE[0]}, 1 thread",
                bench_clips(videos, args.repeats, rng),
            ),
        ]
    for title, rows in sections:
        print(f"\n### {title}\n")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
