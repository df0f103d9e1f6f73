"""Motion masks that weight the reconstruction loss, and the schedule that blends them.

- DPAU, the difference mask (PRP, method.md section 2): where consecutive frames differ;
- CAM, the convolution mask (SMP, section 3): where the rate head looks for the true rate;
- `blend_lambda`: SMP's weight of CAM against DPAU over the epochs.
Both masks live in [0.8, 2.0]: static pixels still count, moving ones count up to 2.5x more.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MASK_LOW, MASK_HIGH = 0.8, 2.0  # motion masks are rescaled into this range
DPAU_GRID = 13  # the pooled difference map is 13x13 at any clip size (28/112 window, 7/112 stride)


def motion_mask_dpau(chunks: torch.Tensor) -> torch.Tensor:
    """Difference motion attention (DPAU) at low resolution.

    chunks: (s, 4, H, W, 3) uint8, per chunk of T original frames the 4 differenced frames.
    Returns (3, s, 13, 13) in [0.8, 2.0]; `upsample_mask` brings it to the target's size.
    The original's avg_pool3d, kernel (3, H/4, W/4) and stride (3, H/16, W/16) over the 3
    squared differences of [0, 1] frames, computed in NumPy on integers (exact until the
    division): in a loader, torch's intra-op threads cost more than the pooling itself
    (docs/benchmarks.md).
    """
    x = chunks.numpy().astype(np.int32)
    squares = np.square(x[:, 1:] - x[:, :-1]).sum(1)  # (s, H, W, 3): the window spans all 3
    h, w = squares.shape[1:3]
    pooled = box_mean(squares, (h // 4, w // 4), (h // 16, w // 16)) / (3 * 255**2)
    pooled = torch.from_numpy(pooled).permute(0, 3, 1, 2)  # (s, 3, 13, 13)
    return rescale_per_map(pooled.flatten(2)).view_as(pooled).transpose(0, 1).contiguous()


def box_mean(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """(s, H, W, C) -> (s, (H - kh) // sh + 1, (W - kw) // sw + 1, C) float32: the mean of each
    kh x kw window, from the summed-area table (float64: exact for sums of integers < 2**53)."""
    (kh, kw), (sh, sw) = kernel, stride
    table = np.zeros((x.shape[0], x.shape[1] + 1, x.shape[2] + 1, x.shape[3]))
    table[:, 1:, 1:] = x.cumsum(1, dtype=np.float64).cumsum(2)
    ys = np.arange(0, x.shape[1] - kh + 1, sh)[:, None]
    xs = np.arange(0, x.shape[2] - kw + 1, sw)[None, :]
    sums = table[:, ys + kh, xs + kw] - table[:, ys, xs + kw] - table[:, ys + kh, xs]
    return ((sums + table[:, ys, xs]) / (kh * kw)).astype(np.float32)


def motion_mask_cam(
    fc_weight: torch.Tensor, rate_map: torch.Tensor, rate: torch.Tensor, size: tuple[int, int, int]
) -> torch.Tensor:
    """Convolution motion attention: the class-activation map of the ground-truth rate.

    fc_weight (4, C) and rate_map (B, C, t, h, w) are detached; returns (B, 3, *size) in
    [0.8, 2.0], normalised per time slice.
    """
    w = fc_weight.detach().float()[rate]  # (B, C)
    cam = torch.einsum("bc,bcthw->bthw", w, rate_map.detach().float())  # (B, t, h, w)
    b, t, h, wd = cam.shape
    cam = rescale_per_map(cam.reshape(b, t, h * wd)).view(b, 1, t, h, wd)
    return upsample_mask(cam, size).expand(-1, 3, -1, -1, -1)


PAPER_EPOCHS = 300  # the schedules are written for the papers' 300-epoch runs


def blend_lambda(schedule: str, epoch: int, total: int) -> float:
    """Weight of the CAM mask at 1-based `epoch` of `total` (DPAU gets 1 - lambda), in the forms
    of the original code (train_predict.py's Mask_lambda); "dpau" and "cam" are its w0 and w1.

    The forms have fixed scales in epochs (75), written for 300 epochs: `epoch` is taken at its
    place in a 300-epoch run, so a short run passes through the same phases (at epoch 1 of 6 the
    original's exp gives 0.82, this 0.036). A 300-epoch run is unchanged."""
    epoch, total = epoch * PAPER_EPOCHS / total, PAPER_EPOCHS
    if schedule == "exp":
        return math.exp((epoch - total) / 75.0)
    if schedule == "log":  # rises fast, then flattens; 1 at the last epoch
        s, eps = 15.0, 0.01
        return (math.log(epoch / s + eps) - math.log(eps)) / (
            math.log(total / s + eps) - math.log(eps)
        )
    if schedule == "sigmoid":  # 0.5 at mid-training, with the original's fixed scale of 75 epochs
        return 1.0 / (1.0 + math.exp((total / 2 - epoch) / 75.0))
    if schedule == "plinear":  # a staircase: steps of 75 epochs
        return min(1.0, math.ceil(epoch / 75.0) * 75.0 / total)
    if schedule == "linear":
        return epoch / total
    if schedule == "dpau":
        return 0.0
    if schedule == "cam":
        return 1.0
    raise ValueError(f"unknown lambda schedule {schedule!r}")


def rescale_per_map(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Min-max normalise the last dim into [0.8, 2.0]. A flat map (a static scene) becomes 1.0,
    a plain unweighted loss, as in the original's fix of its division by zero (NaN losses)."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    span = hi - lo
    norm = (x - lo) / span.clamp_min(eps)
    flat = torch.full_like(x, (1.0 - MASK_LOW) / (MASK_HIGH - MASK_LOW))
    return MASK_LOW + (MASK_HIGH - MASK_LOW) * torch.where(span > eps, norm, flat)


def upsample_mask(mask: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, t, h, w) -> (B, C, *size), trilinear as in the original."""
    return F.interpolate(mask, size=size, mode="trilinear", align_corners=False)
