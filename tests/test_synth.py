import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from smp_lite import __version__
from smp_lite.tools import synth
from smp_lite.tools.synth import (
    CLASSES,
    FIGURE,
    PRESETS,
    SynthConfig,
    act,
    draw_look,
    look_rng,
    pan_camera,
    read_video,
    render_video,
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_meta(root, meta):
    assert (meta["preset"], meta["seed"], meta["version"]) == ("tiny", 0, __version__)
    assert meta["config"]["frames"] == CFG.frames
    listed = {
        row[0] for row in read_list(root / "trainlist01.txt") + read_list(root / "testlist01.txt")
    }
    assert {r["path"] for r in meta["videos"]} == listed
    assert all(r["pan"] >= 0 and isinstance(r["occluder"], bool) for r in meta["videos"])


def test_a_groups_look_is_its_own_in_each_class():
    """As in UCF101: the clips of a group in one class share a look (the same draws), the same
    group in another class has another."""
    a, b = draw_look(look_rng(0, "Wave", 2), CFG), draw_look(look_rng(0, "Wave", 2), CFG)
    assert torch.equal(a["background"], b["background"]) and torch.equal(a["figure"], b["figure"])
    other = draw_look(look_rng(0, "Clap", 2), CFG)
    assert not torch.equal(a["figure"], other["figure"])


@pytest.mark.slow
def test_speeds_span_configured_range(meta):
    lo, hi = CFG.speed_range
    speeds = np.array([r["speed"] for r in meta["videos"]])
    # wider than the factor 2 between neighbouring rates: a speed alone leaves some doubt
    assert 2 < hi / lo < 4
    assert lo <= speeds.min() < lo * 1.3 and hi / 1.3 < speeds.max() <= hi


@pytest.mark.slow
def test_videos_long_enough_and_close_to_rendered(root, meta):
    for r in meta["videos"]:
        decoded = read_video(root / "videos" / r["path"])  # (T, H, W, 3)
        assert decoded.shape == (r["frames"], CFG.height, CFG.width, 3) and r["frames"] >= 129
        if r["group"] == 1:  # re-render a video per class: the file holds what render_video makes
            look = draw_look(look_rng(0, r["class"], 1), CFG)
            rng = video_rng(0, r["class"], 1, r["clip"])
            rendered, info = render_video(r["class"], look, rng, CFG)
            assert info["speed"] == r["speed"]
            assert psnr(decoded, rendered) > 30


def render(class_name, seed, cfg=CFG, group=1):
    look = draw_look(look_rng(0, class_name, group), cfg)
    return render_video(class_name, look, np.random.default_rng(seed), cfg)


def test_render_deterministic():
    a, info_a = render("Juggle", 7)
    b, info_b = render("Juggle", 7)
    c, _ = render("Juggle", 8)
    assert a.dtype == np.uint8 and a.shape == (CFG.frames, CFG.height, CFG.width, 3)
    assert np.array_equal(a, b) and info_a == info_b
    assert not np.array_equal(a, c)


@pytest.mark.slow
def test_generation_repeats_byte_for_byte(root, tmp_path):
    # other worker processes than the fixture's: the encoder once differed between processes
    again = synthesize(tmp_path / "again", preset="tiny", workers=2, progress=False)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert len(files) == 4 + len(CLASSES) * 4
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    differ = [f for f in files if (root / f).read_bytes() != (again / f).read_bytes()]
    assert differ == []


@pytest.mark.parametrize("class_name", CLASSES)
def test_motion_present(class_name):
    frames, _ = render(class_name, 3)
    change = np.abs(np.diff(frames.astype(np.int16), axis=0)).reshape(len(frames) - 1, -1)
    assert (change.max(axis=1) > 0).all()  # no frame repeats: the motion lasts the whole video


def moving_parts(class_name, speed=1.0, seed=0, cfg=CFG):
    """Per frame, the distance each joint and ball moved (P, T - 1), in figure heights."""
    scene = act(class_name, np.random.default_rng(seed), cfg, speed)
    tracks = [v for k, v in scene["joints"].items() if k != "size"]
    tracks += [ball[0] for ball in scene["balls"]]
    steps = np.stack([np.hypot(*np.diff(p, axis=0).T) for p in tracks])
    return steps / (FIGURE * CFG.height)


@pytest.mark.parametrize("class_name", CLASSES)
def test_each_class_moves_its_own_parts(class_name):
    steps = moving_parts(class_name)
    # the fastest part moves at least 1% of the figure's height a frame at natural speed 1
    assert np.median(steps.max(0)) > 0.01, class_name
    parts = {k for k, v in act(class_name, np.random.default_rng(0), CFG, 1.0)["joints"].items()}
    assert "hand_l" in parts and "foot_r" in parts


def test_classes_differ_in_what_moves():
    # which parts move (the pattern over joints and balls) tells the classes apart; seen in
    # place, without the drift that moves every joint alike
    in_place = dataclasses.replace(CFG, drift=0.0)
    patterns = {c: (moving_parts(c, cfg=in_place).mean(1) > 1e-3) for c in CLASSES}
    assert len({tuple(p) for p in patterns.values()}) >= 8  # Roll/Collide etc. share a figure
    assert not patterns["Roll"][:-2].any() and patterns["Roll"][-2:].sum() == 1  # a ball alone


def test_natural_speed_scales_the_motion():
    slow, fast = moving_parts("Clap", 0.5), moving_parts("Clap", 2.0)
    assert fast.max() > 3 * slow.max()


def test_with_drift_the_actor_moves_sideways_by_its_cycles():
    """Every actor travels `drift` figure heights a cycle (Walk its own stride); the data until
    2026-12-08 (in-place) acted in place."""
    cfg = PRESETS["default"]
    for speed in (0.6, 1.5):
        joints = act("Clap", np.random.default_rng(3), cfg, speed)["joints"]
        hip_x, size = joints["hip"][:, 0], joints["size"][0]
        cycles = speed * (cfg.frames - 1) / cfg.period
        travel = abs(hip_x[-1] - hip_x[0])
        assert travel == pytest.approx(cfg.drift * size * cycles, rel=1e-6)
        assert abs(hip_x[cfg.frames // 2] - hip_x.mean()) < travel / 10  # centred on the frame
        still = act("Clap", np.random.default_rng(3), PRESETS["in-place"], speed)["joints"]["hip"]
        assert np.ptp(still[:, 0]) == 0


def test_feet_stay_on_the_floor_in_a_squat():
    joints = act("Squat", np.random.default_rng(1), CFG, 1.0)["joints"]
    lowest = np.maximum(joints["foot_l"][:, 1], joints["foot_r"][:, 1])  # (T,) y grows down
    assert np.ptp(lowest) < 1e-6  # the hip goes down, the feet do not
    assert np.ptp(joints["hip"][:, 1]) > 0.2 * FIGURE * CFG.height


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


def test_camera_is_still_or_pans_independently_of_the_action():
    still = SynthConfig(frames=17, static_camera=1.0, occluder=0.0)
    _, info = render("Wave", 5, still)
    assert info["pan"] == 0.0
    panning = SynthConfig(frames=17, static_camera=0.0)
    look = draw_look(look_rng(0, "Wave", 1), panning)
    pans = [
        render_video(c, look, np.random.default_rng(5), panning)[1]["pan"] for c in ("Wave", "Roll")
    ]
    assert pans[0] > 0 and pans[0] == pans[1]  # in one look, the same draw for every class


def test_bad_preset_raises():
    with pytest.raises(ValueError, match="default"):
        synthesize("/nonexistent/never", preset="huge")


@pytest.mark.slow
def test_existing_dataset_is_returned_without_regenerating(root, meta):
    meta_file = root / "meta.json"
    mtime = meta_file.stat().st_mtime_ns
    with pytest.warns(UserWarning, match="seed"):  # warns that it is not the asked-for seed
        assert synthesize(root, preset="tiny", seed=1, progress=False) == root
    assert meta_file.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_a_dataset_from_other_settings_is_named_when_reused(root, meta, monkeypatch):
    config = {**meta["config"], "grain": 0.0, "classes": tuple(meta["config"]["classes"])}
    monkeypatch.setitem(PRESETS, "tiny", SynthConfig(**config))
    with pytest.warns(UserWarning, match="other settings"):
        assert synthesize(root, preset="tiny", progress=False) == root


def test_a_dataset_older_than_a_setting_is_named_when_reused(meta, tmp_path):
    """Made before `drift` existed: its videos were not drifting, whatever drift's default."""
    older = {k: v for k, v in meta["config"].items() if k != "drift"}
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "config": older}))
    with pytest.warns(UserWarning, match="other settings"):
        assert synthesize(tmp_path, preset="tiny", progress=False) == tmp_path


def test_background_contrast_scales_the_background_around_mid_grey():
    """The variants docs/reproduce.md trains on: the same looks, plain or at 35% contrast."""
    look = {p: draw_look(look_rng(0, "Wave", 2), PRESETS[p]) for p in ("default", "plain", "muted")}
    background = look["default"]["background"]
    assert background.std() > 0.05 and torch.all(look["plain"]["background"] == 0.5)
    torch.testing.assert_close(look["muted"]["background"], 0.5 + 0.35 * (background - 0.5))
    assert look["muted"]["figure"].equal(look["default"]["figure"])  # only the background


@pytest.fixture
def micro(monkeypatch):
    cfg = SynthConfig(
        classes=CLASSES[:2],
        train_groups=1,
        test_groups=1,
        clips_per_group=1,
        frames=129,
        height=48,
        width=64,
    )
    monkeypatch.setitem(PRESETS, "micro", cfg)
    return cfg


@pytest.mark.slow
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
