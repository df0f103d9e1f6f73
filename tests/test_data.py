from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from conftest import distinct_frames

from smp_lite.data import (
    RATES,
    DataError,
    EpochSampler,
    VideoDataset,
    allowed_rates,
    load_index,
    motion_mask_dpau,
    open_video,
    sample_dilated_clip,
    split_by_group,
    upsample_mask,
)


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


def test_dpau_mask_range_and_static_video() -> None:
    rng = np.random.default_rng(0)
    moving = torch.from_numpy(rng.integers(0, 256, (2, 4, 64, 64, 3), dtype=np.uint8))
    mask = motion_mask_dpau(moving)
    assert mask.shape == (3, 2, 13, 13)
    assert mask.min() >= 0.8 - 1e-6 and mask.max() <= 2.0 + 1e-6
    assert torch.isclose(mask.amin(dim=(2, 3)), torch.tensor(0.8)).all()  # per-map min-max
    static = torch.full((1, 4, 112, 112, 3), 90, dtype=torch.uint8)
    flat = motion_mask_dpau(static)
    assert flat.shape == (3, 1, 13, 13)
    assert torch.isfinite(flat).all() and torch.allclose(flat, torch.tensor(2.0))


def test_dpau_mask_follows_motion() -> None:
    """A square moving in the left half only: the mask is high there, low on the right."""
    frames = torch.zeros(1, 4, 64, 64, 3, dtype=torch.uint8)
    for t in range(4):
        frames[0, t, 20:30, 5 + 5 * t : 15 + 5 * t] = 255
    mask = motion_mask_dpau(frames)
    assert torch.allclose(mask[:, 0, :, :6].amax(dim=(1, 2)), torch.tensor(2.0))
    assert mask[:, 0, :, 9:].max() < 0.81  # no motion right of column 36
    full = upsample_mask(mask.unsqueeze(0), (32, 64, 64))
    assert full.shape == (1, 3, 32, 64, 64)


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


def test_decoded_frames_match_written_and_pyav(ucf_tiny) -> None:
    video = load_index(ucf_tiny).train[0]
    written = distinct_frames(140, seed=(video.label + 1) * 100 + int(video.group))
    with av.open(str(video.path)) as container:
        pyav = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(pyav) == 140
    indices = [77, 3, 120, 0, 64, 139, 64]  # seeks backwards and forwards, a repeat
    decoded = open_video(video.path, (64, 80)).get_batch(indices).asnumpy()
    assert decoded.shape == (7, 64, 80, 3)
    for frame, i in zip(decoded, indices, strict=True):
        err = np.abs(frame.astype(int) - pyav[i]).mean()
        assert err < 2.0, f"frame {i} differs from PyAV's by {err}"
        distances = ((written.astype(float) - frame) ** 2).mean(axis=(1, 2, 3))
        assert distances.argmin() == i  # it is the frame that was written at i
        psnr = 10 * np.log10(255**2 / distances[i])
        assert psnr > 25  # unrelated random frames are the codec's worst case


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
