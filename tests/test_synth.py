import json
import re

import numpy as np
import pytest
import torch

from smp_lite import __version__, synth
from smp_lite.synth import (
    CLASSES,
    PRESETS,
    SynthConfig,
    object_motion,
    pan_camera,
    read_video,
    render_video,
    sprite_grid,
    synthesize,
    video_rng,
)

CFG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return synthesize(out, preset="tiny", workers=2, progress=False)


@pytest.fixture(scope="module")
def meta(root):
    return json.loads((root / "meta.json").read_text())


def read_list(path):
    return [line.split() for line in path.read_text().splitlines()]


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_layout_and_list_files(root):
    class_ind = read_list(root / "classInd.txt")
    assert class_ind == [[str(i), name] for i, name in enumerate(CFG.classes, start=1)]
    label_of = {name: int(i) for i, name in class_ind}
    name_re = re.compile(r"^(\w+)/v_(\w+)_g(\d\d)_c(\d\d)\.mp4$")
    train, test = read_list(root / "trainlist01.txt"), read_list(root / "testlist01.txt")
    assert all(len(row) == 2 for row in train) and all(len(row) == 1 for row in test)
    for row in train + test:
        m = name_re.match(row[0])
        assert m and m[1] == m[2] and (root / "videos" / row[0]).is_file()
        if len(row) == 2:
            assert int(row[1]) == label_of[m[1]]
    groups = CFG.train_groups + CFG.test_groups
    assert len(train) + len(test) == len(CFG.classes) * groups * CFG.clips_per_group
    assert len(list((root / "videos").glob("*/*.mp4"))) == len(train) + len(test)
    assert not list(root.parent.glob(".*partial*"))  # the temporary folder was renamed


def test_splits_disjoint_and_cover_all_classes(root):
    def groups_and_classes(list_file):
        paths = [row[0] for row in read_list(root / list_file)]
        groups = {int(re.search(r"_g(\d\d)_", p)[1]) for p in paths}
        return groups, {p.split("/")[0] for p in paths}

    train_groups, train_classes = groups_and_classes("trainlist01.txt")
    test_groups, test_classes = groups_and_classes("testlist01.txt")
    assert train_groups and test_groups and not train_groups & test_groups
    assert test_groups == set(range(1, CFG.test_groups + 1))  # UCF101 style: first groups test
    assert train_classes == test_classes == set(CFG.classes)
    assert len(CFG.classes) >= 10 and set(CFG.classes) <= set(CLASSES)


def test_meta(root, meta):
    assert (meta["preset"], meta["seed"], meta["version"]) == ("tiny", 0, __version__)
    assert meta["config"]["frames"] == CFG.frames
    listed = {
        row[0] for row in read_list(root / "trainlist01.txt") + read_list(root / "testlist01.txt")
    }
    assert {r["path"] for r in meta["videos"]} == listed
    assert all(1 <= r["num_objects"] <= CFG.max_objects for r in meta["videos"])


def test_speeds_span_configured_range(meta):
    lo, hi = CFG.speed_range
    speeds = np.array([r["speed"] for r in meta["videos"]])
    assert hi / lo >= 3  # wide enough to make neighbouring playback rates ambiguous
    assert lo <= speeds.min() < lo * 1.3 and hi / 1.3 < speeds.max() <= hi


def test_videos_long_enough_and_close_to_rendered(root, meta):
    for r in meta["videos"]:
        decoded = read_video(root / "videos" / r["path"])  # (T, H, W, 3)
        assert decoded.shape == (r["frames"], CFG.height, CFG.width, 3) and r["frames"] >= 129
        if r["group"] == 1:  # re-render a video per class: the file holds what render_video makes
            rendered, info = render_video(r["class"], video_rng(0, r["class"], 1, r["clip"]), CFG)
            assert info["speed"] == r["speed"]
            assert psnr(decoded, rendered) > 30


def test_render_deterministic():
    a, info_a = render_video("Orbit", np.random.default_rng(7), CFG)
    b, info_b = render_video("Orbit", np.random.default_rng(7), CFG)
    c, _ = render_video("Orbit", np.random.default_rng(8), CFG)
    assert a.dtype == np.uint8 and a.shape == (CFG.frames, CFG.height, CFG.width, 3)
    assert np.array_equal(a, b) and info_a == info_b
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("class_name", CLASSES)
def test_motion_present(class_name):
    frames, _ = render_video(class_name, np.random.default_rng(3), CFG)
    change = np.abs(np.diff(frames.astype(np.int16), axis=0)).reshape(len(frames) - 1, -1)
    assert (change.max(axis=1) > 0).all()  # no frame repeats: the motion lasts the whole video


@pytest.mark.parametrize("class_name", CLASSES)
def test_motion_not_aliased_at_stride_8(class_name):
    # fastest natural speed, fastest object (speed jitter 1.15), sampled at playback rate 8
    rng, radius = np.random.default_rng(0), 17.0
    for _ in range(20):
        cx, cy, angle, scale = object_motion(
            class_name, rng, CFG.speed_range[1] * 1.15, radius, CFG
        )
        log_zoom = np.abs(np.diff(np.log(scale[::8])))
        respawn = log_zoom > 1  # ZoomIn/Out restart small/large at a new place
        dx = (np.diff(cx[::8]) + CFG.width / 2) % CFG.width - CFG.width / 2  # Move* wrap around
        dy = (np.diff(cy[::8]) + CFG.height / 2) % CFG.height - CFG.height / 2
        assert np.hypot(dx, dy)[~respawn].max() < 35  # px; the frame is 160 x 120
        assert np.rad2deg(np.abs(np.diff(angle[::8]))).max() < 45
        assert log_zoom[~respawn].max() < 0.35


def test_camera_pan_moves_the_background_smoothly():
    # a horizontal ramp seen through a camera panning right at 0.25 px per frame: every pixel
    # brightens by exactly 0.25 px of ramp per frame (sub-pixel motion, no jumps)
    H, W, T = 6, 10, 9
    ramp = torch.arange(40, dtype=torch.float32).div(40).expand(3, 20, 40)  # (3, H', W')
    views = pan_camera(ramp, 0.25, 0.0, T, H, W)  # (T, H, W, 3)
    assert views.shape == (T, H, W, 3)
    steps = views[1:] - views[:-1]
    assert torch.allclose(steps, torch.full_like(steps, 0.25 / 40), atol=1e-6)
    up = pan_camera(ramp.transpose(1, 2).contiguous(), 0.5, np.pi / 2, T, H, W)  # pans down
    assert torch.allclose(up[1:] - up[:-1], torch.full_like(steps, 0.5 / 40), atol=1e-6)


def test_background_moves_with_the_videos_natural_speed():
    still = SynthConfig(frames=17, max_objects=1, pan_px=0.0)
    panning = SynthConfig(frames=17, max_objects=1)
    a, _ = render_video("Pulse", np.random.default_rng(5), still)
    b, _ = render_video("Pulse", np.random.default_rng(5), panning)
    corner = (slice(None), slice(0, 12), slice(0, 12))  # far from the pulsing sprite
    assert np.abs(np.diff(a[corner].astype(int), axis=0)).max() == 0
    assert np.abs(np.diff(b[corner].astype(int), axis=0)).mean() > 0.5


def test_rotate_cw_is_clockwise_on_screen():
    # turned by +90 degrees, the sprite's +x side points down (+y in image coordinates)
    grid = sprite_grid(
        np.array([50.0]), np.array([50.0]), np.array([np.pi / 2]), np.array([10.0]), 100
    )
    u, v = grid[0, 55, 50].tolist()  # the pixel 5 px below the centre
    assert u == pytest.approx(0.55, abs=1e-5) and v == pytest.approx(-0.05, abs=1e-5)
    _, _, angle, _ = object_motion("RotateCW", np.random.default_rng(0), 1.0, 15.0, CFG)
    assert (np.diff(angle) > 0).all()


def test_bad_preset_raises():
    with pytest.raises(ValueError, match="default"):
        synthesize("/nonexistent/never", preset="huge")


def test_existing_dataset_is_returned_without_regenerating(root, meta):
    meta_file = root / "meta.json"
    mtime = meta_file.stat().st_mtime_ns
    with pytest.warns(UserWarning, match="seed"):  # warns that it is not the asked-for seed
        assert synthesize(root, preset="tiny", seed=1, progress=False) == root
    assert meta_file.stat().st_mtime_ns == mtime


def test_a_dataset_from_other_settings_is_named_when_reused(root, meta, monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", SynthConfig(**{**meta["config"], "grain": 0.0}))
    with pytest.warns(UserWarning, match="other settings"):
        assert synthesize(root, preset="tiny", progress=False) == root


@pytest.fixture
def micro(monkeypatch):
    cfg = SynthConfig(
        classes=CLASSES[:2], train_groups=1, test_groups=1, clips_per_group=1, frames=129
    )
    monkeypatch.setitem(PRESETS, "micro", cfg)
    return cfg


def test_overwrite_and_interrupted_run(tmp_path, micro, monkeypatch):
    out = tmp_path / "micro"
    out.mkdir()
    with pytest.raises(FileExistsError):  # exists but incomplete: refuse to touch it
        synthesize(out, preset="micro", workers=1, progress=False)
    assert synthesize(out, preset="micro", workers=1, overwrite=True, progress=False) == out
    assert len(json.loads((out / "meta.json").read_text())["videos"]) == 4

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "write_lists", crash)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "crashed", preset="micro", workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["micro"]  # nothing half-written left
