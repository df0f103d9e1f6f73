from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smp_lite.masks import blend_lambda, motion_mask_cam, motion_mask_dpau, upsample_mask


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
    # a static scene weighs 1.0: a plain loss, neither the 2.0 of the most moving pixel nor NaN
    assert torch.isfinite(flat).all() and torch.allclose(flat, torch.tensor(1.0))


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


@pytest.mark.parametrize("shape", [(1, 48, 48), (8, 48, 64), (4, 112, 112), (2, 50, 70)])
def test_dpau_pooling_is_the_originals_avg_pool3d(shape) -> None:
    """The NumPy pooling against the original's avg_pool3d, kernel (3, H/4, W/4), stride
    (3, H/16, W/16), on random frames of several clip sizes (odd ones too)."""
    s, h, w = shape
    frames = torch.from_numpy(np.random.default_rng(s).integers(0, 256, (s, 4, h, w, 3), np.uint8))
    x = frames.float().div(255).permute(0, 4, 1, 2, 3)  # (s, 3, 4, H, W)
    diff = (x[:, :, 1:] - x[:, :, :-1]).pow(2)
    pooled = F.avg_pool3d(diff, (3, h // 4, w // 4), stride=(3, h // 16, w // 16))[:, :, 0]
    lo, hi = pooled.amin((2, 3), keepdim=True), pooled.amax((2, 3), keepdim=True)
    reference = (0.8 + 1.2 * (pooled - lo) / (hi - lo)).transpose(0, 1)  # (3, s, h', w')
    mask = motion_mask_dpau(frames)
    assert mask.shape == reference.shape
    assert torch.allclose(mask, reference, atol=1e-4)


def test_lambda_schedules_follow_the_original_forms() -> None:
    """Values of the original code's Mask_lambda (train_predict.py), computed by hand."""
    assert blend_lambda("exp", 300, 300) == pytest.approx(1.0)
    assert blend_lambda("exp", 150, 300) == pytest.approx(math.exp(-2), rel=1e-6)  # ~0.135
    assert blend_lambda("exp", 75, 100) == pytest.approx(math.exp(-1))  # as the original's s = 25
    assert blend_lambda("linear", 30, 120) == pytest.approx(0.25)
    # sigmoid: 1 / (1 + exp((E/2 - e) / 75)): 0.5 at mid-training, 1/(1+e^-2) at the end of 300
    assert blend_lambda("sigmoid", 150, 300) == pytest.approx(0.5)
    assert blend_lambda("sigmoid", 300, 300) == pytest.approx(1 / (1 + math.exp(-2)))
    # log: (ln(e/15 + 0.01) - ln 0.01) / (ln(E/15 + 0.01) - ln 0.01)
    assert blend_lambda("log", 300, 300) == pytest.approx(1.0)
    assert blend_lambda("log", 15, 300) == pytest.approx(math.log(101) / math.log(2001))
    # plinear: min(1, ceil(e/75) * 75 / E): a staircase of 75-epoch steps
    assert [blend_lambda("plinear", e, 300) for e in (1, 75, 76, 226, 300)] == pytest.approx(
        [0.25, 0.25, 0.5, 1.0, 1.0]
    )
    assert blend_lambda("dpau", 10, 100) == 0.0 and blend_lambda("cam", 1, 100) == 1.0
    for schedule in ("exp", "log", "sigmoid", "plinear", "linear"):
        values = [blend_lambda(schedule, e, 300) for e in range(1, 301)]
        assert values == sorted(values) and 0 < values[0] and values[-1] <= 1, schedule


def test_lambda_of_a_short_run_is_taken_at_the_same_place_of_a_300_epoch_run() -> None:
    for schedule in ("exp", "log", "sigmoid", "plinear", "linear"):
        short = [blend_lambda(schedule, e, 6) for e in range(1, 7)]
        assert short == pytest.approx([blend_lambda(schedule, 50 * e, 300) for e in range(1, 7)])
    # the original's exp at epoch 1 of 6 is exp(-5 / 25) = 0.82: almost all CAM from the start
    assert blend_lambda("exp", 1, 6) == pytest.approx(math.exp(-250 / 75))
    assert blend_lambda("exp", 6, 6) == 1.0


def test_cam_mask_follows_the_ground_truth_rate() -> None:
    fc_weight = torch.zeros(4, 2)
    fc_weight[0, 0] = 1.0  # rate 0 looks at channel 0, rate 1 at channel 1
    fc_weight[1, 1] = 1.0
    rate_map = torch.zeros(2, 2, 2, 4, 4)
    rate_map[:, 0, :, 0, 0] = 5.0  # channel 0 fires top-left
    rate_map[:, 1, :, 3, 3] = 5.0  # channel 1 fires bottom-right
    mask = motion_mask_cam(fc_weight, rate_map, torch.tensor([0, 1]), (8, 16, 16))
    assert mask.shape == (2, 3, 8, 16, 16)
    assert mask.min() >= 0.8 - 1e-6 and mask.max() <= 2.0 + 1e-6
    assert mask[0, :, :, 0, 0].min() > 1.5 and mask[0, :, :, -1, -1].max() < 1.0
    assert mask[1, :, :, -1, -1].min() > 1.5 and mask[1, :, :, 0, 0].max() < 1.0


def test_cam_mask_of_a_flat_map_has_no_nan() -> None:
    mask = motion_mask_cam(
        torch.randn(4, 8), torch.zeros(3, 8, 2, 2, 2), torch.tensor([0, 1, 3]), (16, 32, 32)
    )
    assert torch.isfinite(mask).all() and torch.allclose(mask, torch.tensor(1.0))
