"""Video data: sample clips, decode only the frames a sample needs (the videos come from a
`DatasetIndex`, index.py).

One dataset class, `VideoDataset`, serves every task. Its `mode` picks what a sample is:
- "prp": a playback-rate perception sample (method.md section 2): a 16-frame clip taken at a
  random rate s in {1, 2, 4, 8}, its 32-frame twice-as-dense reconstruction target with the
  supervision flags, and the low-resolution difference motion mask (DPAU);
- "clip": 16 consecutive frames and the action label (supervised pretraining, fine-tuning).
Frames travel as uint8 and become floats in [0, 1] on the training device
(`harness.batches.to_float`).

Real datasets have flawed files. A video that cannot be decoded, or that has fewer than
clip_len + 1 frames (17 for 16-frame clips: not even rate 1 fits), is skipped: the dataset draws
another video (at most `max_skips` in a row) and names the skipped one in the sample, and the
training loop logs and counts it. A video with enough frames for some rates but not all (rate s
needs clip_len * s + 1 frames, 129 for rate 8) gives the rates it allows; a training sample at
another rate goes to a longer video, and an evaluation view at another rate is dropped and
counted. A decode that hangs (decord on some MPEG-4 files with B-frames: docs/benchmarks.md,
"Video decoding") is given up after `decode_timeout` seconds and its video skipped the same way.
`smp-lite data check` (check.py) finds all of these before training.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# isort: split
import decord  # after torch: decord's CUDA NVBLAS would take over torch's CPU BLAS and crash

from .config import RATES
from .errors import DataError
from .index import Video
from .masks import motion_mask_dpau

decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's lines (decord's own remain)

# ---------------------------------------------------------------------------------------------
# Sampling: which frame indices a sample needs


@dataclass(frozen=True)
class PRPIndices:
    start: int
    rate: int
    clip: np.ndarray  # (T,) the input clip: every rate-th frame
    target: np.ndarray  # (2T,) twice as dense; for rate 1, odd positions are fillers
    target_weight: np.ndarray  # (2T,) 1 where the target frame is supervised
    dpau: np.ndarray  # (rate, 4) per chunk of T original frames, the frames differenced


def allowed_rates(num_frames: int, clip_len: int, rates: tuple[int, ...] = RATES) -> list[int]:
    """Rate s needs clip_len * s + 1 frames (method.md section 2)."""
    return [s for s in rates if num_frames >= clip_len * s + 1]


def sample_dilated_clip(num_frames: int, rate: int, clip_len: int, start: int) -> PRPIndices:
    """Frame indices of a PRP sample at playback `rate` starting at frame `start`."""
    span = clip_len * rate
    if start < 0 or start + span >= num_frames:
        raise ValueError(f"rate {rate} from frame {start} needs {start + span + 1} frames")
    clip = start + rate * np.arange(clip_len)
    if rate == 1:
        # f0, (f0+f1)/2, f1, ..., f15, f15: the filler at 2i+1 is built from clip[i], clip[i+1]
        target = np.repeat(clip, 2)
        weight = np.tile([1.0, 0.0], clip_len)
    else:
        target = start + (rate // 2) * np.arange(2 * clip_len)
        weight = np.ones(2 * clip_len)
    chunk_offsets = np.linspace(0, clip_len - 1, 4).round().astype(int)  # 0,5,10,15 for T=16
    dpau = start + clip_len * np.arange(rate)[:, None] + chunk_offsets[None, :]
    return PRPIndices(start, rate, clip, target, weight.astype(np.float32), dpau)


def prp_sample(ids: PRPIndices, frames: np.ndarray, clip_len: int) -> dict:
    """A PRP sample from the frames `ids` reads, (len(target) + rate * 4, c, c, 3) uint8: the
    input clip, its twice-as-dense target with the supervision flags, the DPAU mask and the
    rate's index."""
    rate = ids.rate
    target = frames[: len(ids.target)]  # (2T, c, c, 3)
    if rate == 1:  # fillers: mean of the neighbouring real frames, the last repeats f15
        nxt = np.concatenate([target[2::2], target[-1:]])
        target[1::2] = ((target[0::2].astype(np.uint16) + nxt + 1) // 2).astype(np.uint8)
    chunks = torch.from_numpy(frames[len(ids.target) :]).view(rate, 4, *frames.shape[1:])
    dpau = motion_mask_dpau(chunks)  # (3, s, 13, 13)
    return {
        "clip": to_clip(target[0::2]),  # the input is every other target frame
        "target": to_clip(target),
        "target_weight": torch.from_numpy(ids.target_weight),
        "dpau": dpau.repeat_interleave(2 * clip_len // rate, dim=1),  # (3, 2T, 13, 13)
        "rate": RATES.index(rate),
    }


def to_clip(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> (3, T, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)


# ---------------------------------------------------------------------------------------------
# Decoding


def open_video(path: Path | str):
    """A decord reader at the video's own frame size; len() is the frame count. A missing file
    raises before the decoder sees it (which would print a line of its own); a file the decoder
    cannot open raises OSError saying so. FFmpeg's log is silenced at import."""
    if not Path(path).exists():
        raise FileNotFoundError("no such file")  # the callers name the video
    try:
        return decord.VideoReader(str(path), num_threads=1)
    except (decord.DECORDError, RuntimeError) as err:
        raise OSError("the decoder cannot open it (not a video, or cut short)") from err


def read_frames(reader, indices: list[int], size: tuple[int, int]) -> np.ndarray:
    """Frames `indices` of `reader`, resized to size=(H, W): (N, H, W, 3) uint8.

    Decoded at the video's own size, then resized by `resize_frames`: decord's resize-on-decode
    (swscale) cost as much as the decoding itself at the paper's size (docs/benchmarks.md).
    """
    return resize_frames(reader.get_batch(indices).asnumpy(), size)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w, 3) -> (N, H, W, 3) uint8, bilinear with antialiasing as PIL resizes (the
    original code's resampler; torch's uint8 kernel is within 1 of it)."""
    if frames.shape[1:3] == tuple(size):
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (N, 3, h, w), channels_last in memory
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def count_frames(
    videos: tuple[Video, ...], workers: int = 0, timeout: float | None = None
) -> tuple[tuple[int, ...], dict[int, str]]:
    """Each video's frame count from its container (nothing is decoded), and why for each that
    cannot be opened within `timeout` seconds (its count 0). Counted in `workers` processes
    (at least one) whose stderr goes nowhere: decord prints a native line of its own for a file
    it cannot open, and the run names that video once, among its skipped ones, instead."""
    paths = [str(v.path) for v in videos]
    count = partial(frame_count, timeout=timeout or DECODE_TIMEOUT_S)
    with ProcessPoolExecutor(max(1, workers), initializer=silence_stderr) as pool:
        counted = list(pool.map(count, paths, chunksize=16))
    return tuple(n for n, _ in counted), {i: why for i, (_, why) in enumerate(counted) if why}


def frame_count(path: str, timeout: float) -> tuple[int, str]:
    """(frames, "") or (0, why the video cannot serve)."""
    try:
        n = call_with_timeout(lambda: len(open_video(path)), timeout)
    except READ_ERRORS as err:
        return 0, str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    return (n, "") if n else (0, "no frames")


def silence_stderr() -> None:
    """Point this process's fd 2 at /dev/null (a counting process's: see count_frames)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)


DECODE_TIMEOUT_S = 60.0  # a video that takes longer to open or to decode is taken for hung


class DecodeTimeout(OSError):
    """A decode that did not end within its timeout."""


def call_with_timeout(fn: Callable[[], object], timeout: float):
    """fn() in a daemon thread; DecodeTimeout when it has not returned after `timeout` seconds.
    A hung decoder cannot be interrupted, so its thread is left blocked; decord releases the GIL
    while it decodes, so everything else goes on, and the thread ends with the process."""
    box: queue.Queue = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            box.put((True, fn()))
        except BaseException as err:  # handed to the caller, who decides
            box.put((False, err))

    threading.Thread(target=run, daemon=True, name="decode").start()
    try:
        ok, value = box.get(timeout=timeout)
    except queue.Empty:
        raise DecodeTimeout(f"decoding took over {timeout:g} s (a hung decoder)") from None
    if not ok:
        raise value
    return value


# ---------------------------------------------------------------------------------------------
# The dataset


@dataclass(frozen=True)
class SamplePlan:
    """A sample, drawn before any decoding: the video, the frames it reads and its crop."""

    index: int  # the video
    rate: int
    reads: np.ndarray  # frame indices, in the order the sample uses them
    top: int
    left: int
    ids: PRPIndices | None  # "prp" mode: what each read frame is for


READ_ERRORS = (decord.DECORDError, RuntimeError, OSError, ValueError)  # a video that cannot serve


class VideoDataset(Dataset):
    """Samples of one task from a list of videos.

    An item is addressed by `(index, epoch)` (plain `index` means epoch 0): its randomness comes
    from a generator seeded by (seed, epoch, index), so samples do not depend on the number of
    workers or on the order they run in, and a resumed run draws the same samples.

    Training ("prp") draws the rate first, uniformly; a video too short for it (rate s needs
    clip_len * s + 1 frames) is swapped for one drawn among those long enough, as the original
    code did, so every rate stays equally frequent whatever the videos' lengths.
    Evaluation (train=False) has `views` items per video: in "prp" mode view v plays the video
    at rates[v % len(rates)], in "clip" mode the views are clips centred at
    linspace(T/2, frames - T/2, views) (the fine-tuning test protocol). Views a video is too
    short for are dropped and counted in `views_dropped`.
    A video that cannot be decoded, whose decoding hangs for `decode_timeout` seconds, or that
    is too short for any sample, is skipped: another one is drawn, and the sample names the
    skipped paths (`"skipped"`, newline-joined) so the training loop can count and log them.
    Frame counts are read once, when the dataset is made (`workers` processes).
    """

    def __init__(
        self,
        videos: tuple[Video, ...],
        mode: str = "prp",
        clip_len: int = 16,
        resize: tuple[int, int] = (128, 171),
        crop: int = 112,
        train: bool = True,
        seed: int = 0,
        rates: tuple[int, ...] = RATES,
        max_skips: int = 20,
        views: int = 1,
        random_crop: bool = True,
        workers: int = 0,
        decode_timeout: float = DECODE_TIMEOUT_S,
    ) -> None:
        if mode not in ("prp", "clip"):
            raise ValueError(f"unknown mode {mode!r}: use 'prp' or 'clip'")
        if crop > min(resize):
            raise ValueError(f"crop {crop} is larger than the resized frame {resize}")
        if views < 1 or (views > 1 and train):
            raise ValueError(f"views must be 1 when training and >= 1 otherwise, got {views}")
        self.videos, self.mode, self.clip_len = videos, mode, clip_len
        self.resize, self.crop, self.train = resize, crop, train
        self.seed, self.rates, self.max_skips, self.views = seed, rates, max_skips, views
        self.random_crop = train and random_crop
        self.decode_timeout = decode_timeout
        self.frames, self.unreadable = count_frames(videos, workers, decode_timeout)
        self.items = [(i, v) for i in range(len(videos)) for v in range(views) if self.fits(i, v)]
        self.views_dropped = len(videos) * views - len(self.items)
        # per rate, the videos long enough for it: where a too-short video's sample goes
        self.long_enough = {
            s: [i for i, n in enumerate(self.frames) if n >= self.need(s)] for s in rates
        }
        if mode == "prp" and train and any(self.frames):
            check_rates_fit(self.long_enough, self.frames, self.need)

    def need(self, rate: int) -> int:
        return self.clip_len * rate + 1

    def fits(self, index: int, view: int) -> bool:
        """Whether a video can give a view; unreadable ones stay, to be skipped and counted."""
        n = self.frames[index]
        if self.train or n == 0:
            return True
        return n >= self.need(self.rates[view % len(self.rates)] if self.mode == "prp" else 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, ...]) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[dict]:
        """The samples of `keys`, each as it would be alone. The keys of one video (EpochSampler's
        `repeats` puts them in one batch) are decoded together: one pass of the decoder serves
        all their clips, each drawn as independently as if it were alone."""
        items = [key[0] if isinstance(key, tuple) else key for key in keys]
        firsts = [  # None: alone in the batch, or the first try cannot even start
            self.first_plan(key) if items.count(item) > 1 else None
            for key, item in zip(keys, items, strict=True)
        ]
        samples: list[dict | None] = [None] * len(keys)
        hung: dict[int, str] = {}  # videos whose decoding timed out: not waited for twice
        for index in dict.fromkeys(plan.index for plan in firsts if plan):
            members = [i for i, plan in enumerate(firsts) if plan and plan.index == index]
            if len(members) < 2:
                continue
            try:
                loaded = self.load_timed([firsts[i] for i in members])
            except DecodeTimeout as err:
                hung[index] = str(err)
                continue
            except READ_ERRORS:
                continue  # each key tries again alone, and skips the video as it would alone
            for i, sample in zip(members, loaded, strict=True):
                samples[i] = {**sample, "index": index, "skipped": ""}
        return [
            s if s is not None else self.sample(key, hung)
            for key, s in zip(keys, samples, strict=True)
        ]

    def key_draws(self, key: int | tuple[int, ...]) -> tuple[np.random.Generator, int, int, int]:
        """(generator, video, view, rate) of a key `item`, `(item, epoch)` or `(item, epoch,
        repeat)`: the randomness comes from (seed, epoch, item[, repeat])."""
        item, epoch, repeat = (*key, 0, 0)[:3] if isinstance(key, tuple) else (key, 0, 0)
        rng = np.random.default_rng([self.seed, epoch, item, *([repeat] if repeat else [])])
        index, view = self.items[item]
        rate = self.rates[view % len(self.rates)]
        if self.train:
            rate = self.rates[int(rng.integers(len(self.rates)))]
        return rng, index, view, rate

    def first_plan(self, key: int | tuple[int, ...]) -> SamplePlan | None:
        """The plan of the key's first try, as `sample` draws it; None if it cannot be made."""
        rng, index, view, rate = self.key_draws(key)
        index = self.long_enough_video(index, rate, rng)
        if not self.frames[index]:  # unreadable when counted: `sample` finds out why
            return None
        try:
            return self.plan(index, rate, view, rng)
        except ValueError:
            return None

    def sample(self, key: int | tuple[int, ...], hung: dict[int, str]) -> dict:
        """One key's sample: another video drawn after each one that cannot serve."""
        rng, index, view, rate = self.key_draws(key)
        skipped = []
        for _ in range(self.max_skips + 1):
            index = self.long_enough_video(index, rate, rng)
            video = self.videos[index]
            try:
                plan = self.plan(index, rate, view, rng)
                if index in hung:
                    raise DecodeTimeout(hung[index])
                [sample] = self.load_timed([plan])
            except READ_ERRORS as err:
                skipped.append(f"{video.path}: {str(err).splitlines()[0][:200]}")
                index = int(rng.integers(len(self.videos)))
                continue
            return {**sample, "index": index, "skipped": "\n".join(skipped)}
        raise DataError(f"{len(skipped)} videos in a row could not be read, last: {skipped[-1]}")

    def long_enough_video(self, index: int, rate: int, rng: np.random.Generator) -> int:
        """`index`, or in "prp" mode a video drawn among those long enough for `rate` when it
        is not; a video too short for any sample stays, to be skipped and counted."""
        n = self.frames[index]
        if self.mode != "prp" or n < self.need(1) or n >= self.need(rate):
            return index
        longer = self.long_enough[rate]
        return longer[int(rng.integers(len(longer)))]

    def plan(self, index: int, rate: int, view: int, rng: np.random.Generator) -> SamplePlan:
        """What a sample of video `index` reads and where it crops, drawn before decoding;
        raises ValueError if the video is too short for it."""
        n, T = self.frame_count(index), self.clip_len
        if n < self.need(rate if self.mode == "prp" else 1):
            too_short = "any playback rate" if n < self.need(1) else f"rate {rate}"
            raise ValueError(f"{n} frames, too short for {too_short}")
        ids = None
        if self.mode == "prp":
            ids = sample_dilated_clip(n, rate, T, int(rng.integers(n - T * rate)))
            reads = np.concatenate([ids.target, ids.dpau.ravel()])
        elif self.train:
            reads = int(rng.integers(n - T + 1)) + np.arange(T)
        else:  # centred at linspace(T/2, frames - T/2, views)[view]
            last = n - T
            reads = (round(last * view / (self.views - 1)) if self.views > 1 else last // 2) + (
                np.arange(T)
            )
        return SamplePlan(index, rate, reads, *self.crop_origin(rng), ids)

    def crop_origin(self, rng: np.random.Generator) -> tuple[int, int]:
        """(top, left) of the one crop of a sample's frames: random (SMP, supervised) or
        centred (PRP, evaluation)."""
        (h, w), c = self.resize, self.crop
        if self.random_crop:
            return int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        return (h - c) // 2, (w - c) // 2

    def frame_count(self, index: int) -> int:
        """The count read when the dataset was made; for a video that could not be read then,
        OSError saying why (as found then: a file is not opened twice to fail twice)."""
        if not self.frames[index]:
            raise OSError(self.unreadable[index])
        return self.frames[index]

    def load_timed(self, plans: list[SamplePlan]) -> list[dict]:
        """`load` under the decode timeout."""
        return call_with_timeout(partial(self.load, plans), self.decode_timeout)

    def load(self, plans: list[SamplePlan]) -> list[dict]:
        """The samples of plans of one video: each frame any of them reads decoded and resized
        once, in one pass. Raises if the video cannot be read."""
        reader = open_video(self.videos[plans[0].index].path)
        wanted, where = np.unique(np.concatenate([p.reads for p in plans]), return_inverse=True)
        frames = read_frames(reader, wanted.tolist(), self.resize)  # (N, H, W, 3)
        ends = np.cumsum([len(p.reads) for p in plans])
        samples = []
        for plan, end in zip(plans, ends, strict=True):
            rows = where[end - len(plan.reads) : end]
            crop = np.s_[plan.top : plan.top + self.crop, plan.left : plan.left + self.crop]
            sample_frames = frames[(rows, *crop)]  # (len(reads), c, c, 3), a copy
            label = self.videos[plan.index].label
            if plan.ids is None:
                samples.append({"clip": to_clip(sample_frames), "label": label})
            else:
                sample = prp_sample(plan.ids, sample_frames, self.clip_len)
                samples.append({**sample, "label": label})
        return samples


def check_rates_fit(
    long_enough: dict[int, list[int]], frames: tuple[int, ...], need: Callable[[int], int]
) -> None:
    """Refuse training when a playback rate has no video long enough for it."""
    for rate, videos in long_enough.items():
        if not videos:
            raise DataError(
                f"no training video has the {need(rate)} frames playback rate {rate} needs "
                f"(the longest has {max(frames)}): use shorter clips (--clip-len) or longer videos"
            )
