from __future__ import annotations

import dataclasses
import os
import time

import av
import numpy as np
import pytest
import torch
from helpers import tiny_config
from PIL import Image
from video_files import distinct_frames, write_ucf_layout

from smp_lite import data as data_module
from smp_lite.config import RATES
from smp_lite.data import (
    VideoDataset,
    allowed_rates,
    open_video,
    read_frames,
    resize_frames,
    sample_dilated_clip,
)
from smp_lite.errors import DataError
from smp_lite.harness.batches import EpochSampler
from smp_lite.harness.checkpoint import load_checkpoint
from smp_lite.index import load_index, split_by_group
from smp_lite.train import train


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("start", [0, 3])
def test_sample_dilated_clip_indices(rate: int, start: int) -> None:
    ids = sample_dilated_clip(200, rate, 16, start)
    assert ids.clip.tolist() == [start + rate * i for i in range(16)]
    assert len(ids.target) == 32 and len(ids.target_weight) == 32
    assert (ids.target[0::2] == ids.clip).all()  # the input is every other target frame
    if rate == 1:
        assert ids.target.tolist() == np.repeat(ids.clip, 2).tolist()
        assert ids.target_weight.tolist() == [1.0, 0.0] * 16  # fillers are not supervised
    else:
        assert ids.target.tolist() == [start + rate // 2 * j for j in range(32)]
        assert ids.target_weight.tolist() == [1.0] * 32
    assert ids.dpau.shape == (rate, 4)
    assert ids.dpau[:, 1:].tolist() == (ids.dpau[:, :1] + [5, 10, 15]).tolist()
    assert ids.dpau[:, 0].tolist() == [start + 16 * k for k in range(rate)]
    assert max(ids.target.max(), ids.dpau.max()) < start + 16 * rate


def test_sample_dilated_clip_needs_enough_frames() -> None:
    sample_dilated_clip(129, 8, 16, 0)
    with pytest.raises(ValueError):
        sample_dilated_clip(128, 8, 16, 0)


def test_allowed_rates() -> None:
    assert allowed_rates(129, 16) == [1, 2, 4, 8]
    assert allowed_rates(128, 16) == [1, 2, 4]
    assert allowed_rates(17, 16) == [1]
    assert allowed_rates(16, 16) == []


def test_decoded_frames_match_written_and_pyav(ucf_tiny) -> None:
    video = load_index(ucf_tiny).train[0]
    written = distinct_frames(140, seed=(video.label + 1) * 100 + int(video.group))
    with av.open(str(video.path)) as container:
        pyav = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(pyav) == 140
    indices = [77, 3, 120, 0, 64, 139, 64]  # seeks backwards and forwards, a repeat
    decoded = read_frames(open_video(video.path), indices, (64, 80))
    assert decoded.shape == (7, 64, 80, 3)
    for frame, i in zip(decoded, indices, strict=True):
        err = np.abs(frame.astype(int) - pyav[i]).mean()
        assert err < 2.0, f"frame {i} differs from PyAV's by {err}"
        distances = ((written.astype(float) - frame) ** 2).mean(axis=(1, 2, 3))
        assert distances.argmin() == i  # it is the frame that was written at i
        psnr = 10 * np.log10(255**2 / distances[i])
        assert psnr > 25  # unrelated random frames are the codec's worst case


@pytest.mark.parametrize("size", [(128, 171), (48, 64)])  # up (the synth data), down (UCF101)
def test_frames_are_resized_as_the_originals_pil_bilinear(size) -> None:
    frames = distinct_frames(3, 120, 160)
    resized = resize_frames(frames, size)
    assert resized.shape == (3, *size, 3) and resized.dtype == np.uint8
    pil = np.stack(
        [np.asarray(Image.fromarray(f).resize(size[::-1], Image.BILINEAR)) for f in frames]
    )
    assert np.abs(resized.astype(int) - pil).max() <= 1
    assert resize_frames(frames, (120, 160)) is frames  # the video's own size: no copy


def test_prp_sample(ucf_tiny) -> None:
    index = load_index(ucf_tiny)
    ds = VideoDataset(index.train, mode="prp", clip_len=16, resize=(64, 80), crop=48, seed=1)
    seen_rates = set()
    for key in range(len(ds)):
        s = ds[key]
        seen_rates.add(s["rate"])
        assert s["clip"].shape == (3, 16, 48, 48) and s["clip"].dtype == torch.uint8
        assert s["target"].shape == (3, 32, 48, 48)
        assert torch.equal(s["target"][:, 0::2], s["clip"])
        assert s["dpau"].shape == (3, 32, 13, 13)
        assert s["dpau"].min() >= 0.8 - 1e-6 and s["dpau"].max() <= 2.0 + 1e-6
        assert s["skipped"] == ""
        if s["rate"] == 0:
            assert s["target_weight"].tolist() == [1.0, 0.0] * 16
            mean = (s["target"][:, 0:-2:2].int() + s["target"][:, 2::2].int() + 1) // 2
            assert torch.equal(s["target"][:, 1:-1:2].int(), mean)
            assert torch.equal(s["target"][:, -1], s["target"][:, -2])
    assert len(seen_rates) >= 3


def test_samples_are_deterministic_and_depend_on_epoch(ucf_tiny) -> None:
    index = load_index(ucf_tiny)
    ds = VideoDataset(index.train, mode="prp", resize=(64, 80), crop=48, seed=3)
    a, b = ds[(2, 5)], ds[(2, 5)]
    assert a["rate"] == b["rate"] and torch.equal(a["clip"], b["clip"])
    others = [ds[(2, e)] for e in range(6)]
    assert len({(o["rate"], o["clip"].float().sum().item()) for o in others}) > 1


def test_clip_sample(ucf_tiny) -> None:
    index = load_index(ucf_tiny)
    ds = VideoDataset(index.test, mode="clip", clip_len=16, resize=(64, 80), crop=64, train=False)
    s = ds[0]
    assert s["clip"].shape == (3, 16, 64, 64) and s["label"] == index.test[0].label
    assert torch.equal(ds[0]["clip"], s["clip"])  # centre crop, centre clip: fixed


def test_eval_views_play_each_video_at_every_rate(ucf_tiny) -> None:
    index = load_index(ucf_tiny)
    videos = index.train[:2]
    ds = VideoDataset(videos, mode="prp", resize=(64, 80), crop=48, train=False, views=len(RATES))
    assert len(ds) == 2 * len(RATES)
    samples = [ds[i] for i in range(len(ds))]
    assert [s["index"] for s in samples] == [0] * 4 + [1] * 4
    assert [s["rate"] for s in samples] == [0, 1, 2, 3] * 2  # 140 frames: every rate fits
    with pytest.raises(ValueError, match="views"):
        VideoDataset(videos, mode="prp", resize=(64, 80), crop=48, train=True, views=4)


def test_eval_views_of_clips_follow_the_test_protocol(ucf_tiny) -> None:
    index = load_index(ucf_tiny)
    ds = VideoDataset(index.test[:1], mode="clip", resize=(64, 80), crop=64, train=False, views=3)
    whole = read_frames(open_video(index.test[0].path), list(range(140)), (64, 80))
    whole = torch.from_numpy(whole[:, :, 8:72]).permute(3, 0, 1, 2)  # centre crop (3, 140, 64, 64)
    # clips centred at linspace(8, 140 - 8, 3): they start at 0, 62 and 124
    for view, start in enumerate([0, 62, 124]):
        assert torch.equal(ds[view]["clip"], whole[:, start : start + 16])


def test_unreadable_video_is_skipped_and_named(ucf_tiny, tmp_path) -> None:
    index = load_index(ucf_tiny)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    videos = (type(index.train[0])(broken, 0, "99"), *index.train[:2])
    ds = VideoDataset(videos, mode="prp", resize=(64, 80), crop=48)
    s = ds[0]
    assert "broken.mp4" in s["skipped"] and s["index"] != 0
    only_broken = VideoDataset(videos[:1], mode="prp", resize=(64, 80), crop=48, max_skips=3)
    with pytest.raises(DataError, match="could not be read"):
        only_broken[0]


def test_epoch_sampler_shards_and_reshuffles() -> None:
    s0, s1 = (
        EpochSampler(10, seed=0, rank=0, world_size=2),
        EpochSampler(10, 0, rank=1, world_size=2),
    )
    a, b = list(s0), list(s1)
    assert len(a) == len(b) == 5
    assert sorted(i for i, _ in a + b) == list(range(10))
    s0.set_epoch(1)
    assert [i for i, _ in s0] != [i for i, _ in a] and all(e == 1 for _, e in s0)
    s0.set_epoch(1, skip=3)
    assert len(list(s0)) == len(s0) == 2


def test_evaluation_shards_give_each_key_to_one_rank() -> None:
    """7 keys over 3 ranks: training pads to 3 x 3 keys, evaluation counts each key once."""
    padded = [list(EpochSampler(7, 0, False, rank, 3)) for rank in range(3)]
    assert [len(keys) for keys in padded] == [3, 3, 3]
    shards = [EpochSampler(7, 0, False, rank, 3, pad=False) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]
    keys = [i for s in shards for i, _ in s]
    assert sorted(keys) == list(range(7))


def test_epoch_sampler_repeats_each_video_in_a_row_and_shards_whole_videos() -> None:
    shards = [EpochSampler(5, seed=2, rank=r, world_size=2, repeats=3) for r in range(2)]
    keys = [list(s) for s in shards]
    assert [len(k) for k in keys] == [len(s) for s in shards] == [9, 9]  # 3 padded videos each
    for mine in keys:
        for v in range(3):  # (index, epoch), then (index, epoch, 1), (index, epoch, 2)
            i = mine[3 * v][0]
            assert mine[3 * v : 3 * v + 3] == [(i, 0), (i, 0, 1), (i, 0, 2)]
    assert {k[0] for k in keys[0] + keys[1]} == set(range(5))
    once = EpochSampler(5, seed=2, rank=0, world_size=2)
    assert [k[0] for k in keys[0][::3]] == [i for i, _ in once]  # the same videos, in order
    shards[0].set_epoch(0, skip=4)  # resuming mid-video
    assert list(shards[0]) == keys[0][4:]


def count_opens(monkeypatch) -> list:
    opened = []
    real = data_module.open_video
    monkeypatch.setattr(data_module, "open_video", lambda path: opened.append(path) or real(path))
    return opened


@pytest.mark.parametrize("mode", ["prp", "clip"])
def test_repeated_clips_of_a_video_are_decoded_once_and_equal_the_clips_alone(
    ucf_tiny, monkeypatch, mode
) -> None:
    """Keys of one video in one batch (EpochSampler's repeats) give the very samples each key
    gives alone, from one opening of the video."""
    videos = load_index(ucf_tiny).train[:3]
    ds = VideoDataset(videos, mode=mode, resize=(64, 80), crop=48, seed=4)
    keys = [(1, 2), (1, 2, 1), (1, 2, 2), (1, 2, 3), (0, 2)]
    alone = [ds[key] for key in keys]
    opened = count_opens(monkeypatch)
    together = ds.__getitems__(keys)
    assert len(opened) == 2  # video 1 once for its four keys, video 0 once
    for a, b in zip(alone, together, strict=True):
        assert a.keys() == b.keys()
        for name, value in a.items():
            assert torch.equal(value, b[name]) if torch.is_tensor(value) else value == b[name]
    clips = [s["clip"] for s in together[:4]]  # drawn independently: four different clips
    assert len({c.float().sum().item() for c in clips}) == 4


def test_repeated_clips_of_a_video_broken_since_counted_skip_it_as_alone(
    ucf_tiny, tmp_path
) -> None:
    """A video that could be counted but no longer decoded (replaced during the run): the keys
    of its batch each skip it, as they would alone."""
    index = load_index(ucf_tiny)
    broken = tmp_path / "broken.avi"
    broken.write_bytes(index.train[0].path.read_bytes())
    videos = (dataclasses.replace(index.train[0], path=broken), *index.train[1:3])
    ds = VideoDataset(videos, mode="prp", resize=(64, 80), crop=48)
    assert ds.frames[0] > 0
    broken.write_bytes(b"not a video at all" * 100)
    keys = [(0, 0), (0, 0, 1), (0, 0, 2)]
    together = ds.__getitems__(keys)
    for key, s in zip(keys, together, strict=True):
        assert "broken.avi" in s["skipped"] and s["index"] != 0
        assert torch.equal(s["clip"], ds[key]["clip"])


@pytest.fixture(scope="module")
def long_and_short(tmp_path_factory) -> tuple:
    """Four 140-frame videos (every rate fits) and four 40-frame ones (rates 1 and 2 only)."""
    root = tmp_path_factory.mktemp("lengths")
    long = write_ucf_layout(root / "long", ["A", "B"], {"train": [1, 2], "test": [5]}, frames=140)
    short = write_ucf_layout(root / "short", ["A", "B"], {"train": [3, 4], "test": [6]}, frames=40)
    return load_index(long).train, load_index(short).train


@pytest.mark.slow
def test_training_keeps_the_drawn_rate_and_swaps_a_short_video(long_and_short) -> None:
    long, short = long_and_short
    ds = VideoDataset(long + short, mode="prp", clip_len=16, resize=(32, 40), crop=32)
    counts = {rate: 0 for rate in range(len(RATES))}
    for epoch in range(30):
        for item in range(len(ds)):
            s = ds[item, epoch]
            counts[s["rate"]] += 1
            if RATES[s["rate"]] > 2:  # rate 4 and 8 need 65 and 129 frames: a long video
                assert s["index"] < len(long)
            assert s["skipped"] == ""  # a swap is no skip
    # 240 draws: every rate near 60; keeping the short videos at rates 1-2 gave rate 8 about 30
    assert all(40 <= n <= 80 for n in counts.values()), counts


def test_evaluation_drops_the_views_a_video_is_too_short_for(long_and_short) -> None:
    long, short = long_and_short
    videos = (long[0], short[0])
    ds = VideoDataset(videos, mode="prp", resize=(32, 40), crop=32, train=False, views=4)
    assert len(ds) == 4 + 2 and ds.views_dropped == 2  # the 40-frame video at rates 4 and 8
    samples = [ds[i] for i in range(len(ds))]
    assert [(s["index"], RATES[s["rate"]]) for s in samples] == [
        (0, 1), (0, 2), (0, 4), (0, 8), (1, 1), (1, 2)
    ]  # fmt: skip


def test_crops_random_or_centred(ucf_tiny) -> None:
    videos = load_index(ucf_tiny).train[:1]
    for training, random_crop in ((True, False), (False, True), (False, False)):
        ds = VideoDataset(videos, resize=(64, 80), crop=48, train=training, random_crop=random_crop)
        for seed in range(5):
            assert ds.crop_origin(np.random.default_rng(seed)) == (8, 16)  # centred
    ds = VideoDataset(videos, resize=(64, 80), crop=48, train=True, random_crop=True)
    origins = {ds.crop_origin(np.random.default_rng(seed)) for seed in range(20)}
    assert len(origins) > 5 and all(0 <= t <= 16 and 0 <= left <= 32 for t, left in origins)


# ---------------------------------------------------------------------------------------------
# Flawed files of the official layouts


def test_corrupt_and_short_videos_are_skipped_and_named(official_hmdb) -> None:
    train = load_index(official_hmdb).train  # holds a corrupt and a 10-frame video
    flawed = {
        "#122_Cleaning_brush_hair_f_nm_np1_ri_bad_0.avi",
        "Short_(clip)_cartwheel_f_nm_np1_fr_goo_0.avi",
    }
    for mode in ("prp", "clip"):
        ds = VideoDataset(train, mode=mode, clip_len=16, resize=(64, 80), crop=48)
        skipped = set()
        for i in range(len(ds)):
            s = ds[i]
            assert train[s["index"]].path.name not in flawed  # drawn from another video
            skipped |= {line.split(": ")[0] for line in s["skipped"].splitlines()}
        assert skipped == {str(v.path) for v in train if v.path.name in flawed}
    only_flawed = tuple(v for v in train if v.path.name in flawed)
    ds = VideoDataset(only_flawed, mode="clip", resize=(64, 80), crop=48, max_skips=5)
    with pytest.raises(DataError, match="6 videos in a row could not be read"):
        ds[0]
    # PRP training says so when the dataset is made, before any training step
    with pytest.raises(DataError, match="no training video has the 17 frames playback rate 1"):
        VideoDataset(only_flawed, mode="prp", resize=(64, 80), crop=48)


@pytest.mark.parametrize("layout", ["official_hmdb", "csv_list"])
@pytest.mark.slow
def test_training_counts_the_corrupt_video(layout, request, tmp_path) -> None:
    """Every training video is drawn in the single batch; with 8-frame clips the 10-frame video
    is long enough, so only the corrupt file is skipped."""
    data = request.getfixturevalue(layout)
    cfg = tiny_config(data, tmp_path / "run", epochs=1, batch_size=8, val_fraction=0)
    result = train(cfg, progress=False)
    assert result["skipped_videos"] == 1
    [line] = load_checkpoint(tmp_path / "run" / "last.pt")["skipped_videos"]
    assert "#122_Cleaning" in line or "broken.avi" in line


@pytest.mark.slow
def test_a_listed_but_missing_video_is_counted_and_named_like_a_corrupt_one(
    csv_list, tmp_path, capfd
) -> None:
    """A CSV naming a file that is not on disk, beside the corrupt one: both skipped, counted
    and named with why; neither the decoder's native line nor FFmpeg's log is printed."""
    listed = tmp_path / "list.csv"
    header, *rows = csv_list.read_text().splitlines()
    rows = [r if r.startswith("/") else f"{csv_list.parent}/{r}" for r in rows]
    missing = f"{csv_list.parent}/gone/missing.avi,run,train"
    listed.write_text("\n".join([header, *rows, missing]) + "\n")
    cfg = tiny_config(f"csv:{listed}", tmp_path / "run", epochs=1, batch_size=8, val_fraction=0)
    result = train(cfg, progress=False)
    assert result["skipped_videos"] == 2
    lines = sorted(load_checkpoint(tmp_path / "run" / "last.pt")["skipped_videos"])
    assert "broken.avi: the decoder cannot open it" in lines[0], lines
    assert "gone/missing.avi: no such file" in lines[1], lines
    out, err = capfd.readouterr()
    assert "ERROR opening" not in out + err and "moov atom" not in out + err, err


def test_open_video_says_why(csv_list, tmp_path, capfd) -> None:
    with pytest.raises(OSError, match="no such file"):
        open_video(tmp_path / "none.mp4")
    assert capfd.readouterr().err == ""  # the decoder never saw it
    with pytest.raises(OSError, match="the decoder cannot open it"):
        open_video(csv_list.parent / "clips/run/broken.avi")
    assert "moov atom" not in capfd.readouterr().err  # FFmpeg's own log is off
    assert len(open_video(csv_list.parent / "clips/run/run0.avi")) == 140


@pytest.mark.slow
def test_validation_counts_the_corrupt_video(official_hmdb, tmp_path) -> None:
    videos = load_index(official_hmdb).train
    # a seed whose validation part holds the corrupt video, and the training part does not
    seed = next(
        s
        for s in range(100)
        if any("#122" in v.path.name for v in split_by_group(videos, 0.5, s)[1])
    )
    cfg = tiny_config(
        official_hmdb, tmp_path / "run", epochs=1, val_fraction=0.5, seed=seed, limit_batches=0
    )
    result = train(cfg, progress=False)
    assert result["skipped_videos"] == 1
    [line] = load_checkpoint(tmp_path / "run" / "last.pt")["skipped_videos"]
    assert "#122_Cleaning" in line


@pytest.mark.slow
def test_training_on_the_official_ucf101_layout(official_ucf, tmp_path) -> None:
    """.avi files under UCF-101/ with the official lists, split 2, the spelling mismatch too."""
    cfg = tiny_config(f"ucf101:{official_ucf}", tmp_path / "run", epochs=1, split=2)
    result = train(cfg, progress=False)
    assert result["skipped_videos"] == 0 and result["epoch"] == 1
    assert load_checkpoint(tmp_path / "run" / "best.pt")["config"]["split"] == 2


def test_a_decode_that_hangs_is_given_up_and_the_video_skipped(ucf_tiny, tmp_path) -> None:
    """A FIFO that no one writes to: the real decoder blocks opening it, as it does on a hung
    decode. Counting frames and sampling both give up after the timeout and go on."""
    hung = tmp_path / "v_Hung_g01_c01.avi"
    os.mkfifo(hung)
    good = load_index(ucf_tiny).train[:3]
    videos = (*good, dataclasses.replace(good[0], path=hung))
    t0 = time.monotonic()
    try:
        dataset = VideoDataset(
            videos, mode="prp", clip_len=8, resize=(64, 80), crop=48, decode_timeout=1.0
        )
        assert dataset.frames[-1] == 0 and all(dataset.frames[:-1])  # unreadable, not stuck
        sample = dataset[len(videos) - 1]  # the hung video's own item
    finally:
        release_readers(hung)
    assert time.monotonic() - t0 < 30
    assert sample["index"] != len(videos) - 1  # another video served the item
    lines = sample["skipped"].splitlines()  # the redraw may land on the hung video again
    assert lines and all(
        line.startswith(str(hung)) and "decoding took over 1 s (a hung decoder)" in line
        for line in lines
    )


def release_readers(fifo) -> None:
    """Open the FIFO for writing and close it: each reader blocked on it gets end-of-file and
    its abandoned thread ends."""
    for _ in range(10):
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader left
            return
        time.sleep(0.05)
