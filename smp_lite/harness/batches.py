"""How the loop draws samples and what a batch becomes on the device: the epoch's keys for
`VideoDataset`, sharded over processes (`EpochSampler`), and frames from uint8 to floats
(`to_float`)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def to_float(clip: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, T, H, W) -> float in [0, 1]; no mean/std normalisation (method.md 1)."""
    return clip.float().div_(255)


class EpochSampler(Sampler):
    """Yields `(index, epoch)` keys: a permutation per epoch from (seed, epoch), sharded over
    `world_size` ranks, starting `skip` keys in. Training pads the shards by repeating keys so
    every rank takes as many steps (DDP needs it); evaluation (pad=False) gives each key to one
    rank only, so every clip counts once.

    With `repeats` = K > 1 (repeated sampling, training only) each index comes K times in a row,
    as `(index, epoch)` then `(index, epoch, k)` for k = 1..K-1: K clips of one video, drawn
    independently, that `VideoDataset` decodes in one pass when they share a batch. An epoch
    is then K times as long."""

    def __init__(
        self,
        n: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        repeats: int = 1,
    ) -> None:
        self.n, self.seed, self.shuffle, self.pad = n, seed, shuffle, pad
        self.rank, self.world_size, self.repeats = rank, world_size, repeats
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        if self.pad:
            return -(-self.n // self.world_size) * self.repeats - self.skip
        return len(range(self.rank, self.n, self.world_size)) * self.repeats - self.skip

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad:
            per_rank = -(-self.n // self.world_size)
            order += order[: per_rank * self.world_size - self.n]
        mine = order[self.rank :: self.world_size]  # whole videos per rank, then the repeats
        keys = [(i, self.epoch, *([k] if k else [])) for i in mine for k in range(self.repeats)]
        return iter(keys[self.skip :])
