"""Can a backbone learn the playback rate on a dataset, and from what? PRP's rate head and loss
alone (no decoder), trained on the training groups and tested each epoch on held-out groups,
from the clip as the method feeds it or with its static part taken away
(docs/reproduce.md, "The residual backbones and the rate"):

    python benchmarks/check_rate.py --arch r3d10 --size 32 --epochs 8 [--input diff]

Prints one JSON line per epoch: training and held-out rate accuracy (chance 0.25), seconds.
One thread: two such checks run side by side on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from smp_lite.config import INITS
from smp_lite.data import VideoDataset
from smp_lite.harness.accel import guard_cpu_bf16_conv3d
from smp_lite.harness.batches import EpochSampler, to_float
from smp_lite.harness.runtime import cpu_has_native_bf16
from smp_lite.index import load_index, split_by_group
from smp_lite.models import MotionNet
from smp_lite.train import make_config, make_optimizer

INPUTS = {  # (B, 3, T, H, W) -> the same shape
    "rgb": lambda x: x,  # as the method: values in [0, 1]
    "diff": lambda x: F.pad(x.diff(dim=2) * 4, (0, 0, 0, 0, 0, 1)),  # frame differences
    "demean": lambda x: x - x.mean(2, keepdim=True),  # the clip less its temporal mean
    "center": lambda x: (x - 0.45) / 0.225,  # normalised like torchvision's video models
    "grey0": lambda x: x - 0.5,  # mid-grey (a plain background) at zero
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synth")
    parser.add_argument("--arch", default="r3d10")
    parser.add_argument("--weight-init", default="pytorch", choices=INITS)
    parser.add_argument("--input", default="rgb", choices=list(INPUTS))
    parser.add_argument("--size", type=int, default=32, help="crop side; frames resized to 4:3")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01, help="SGD; the head's fc at 10x")
    parser.add_argument("--rate-weight", type=float, default=0.1, help="as PRP's loss")
    parser.add_argument("--repeats", type=int, default=1, help="clips of a video per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--standardize-head", action="store_true", help="pooled features standardised before fc"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    train_videos, val_videos = split_by_group(load_index(args.data).train, 0.1, args.seed)
    clips = dict(mode="prp", clip_len=16, resize=(args.size, args.size * 4 // 3), crop=args.size)
    train_set = VideoDataset(train_videos, train=True, random_crop=False, **clips)
    val_set = VideoDataset(val_videos, train=False, views=4, **clips)  # each video at each rate
    sampler = EpochSampler(len(train_set), args.seed, repeats=args.repeats)
    loader = DataLoader(train_set, batch_size=8, sampler=sampler, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=32)

    model = MotionNet(args.arch, mg=False, decoder=False, weight_init=args.weight_init)
    if args.standardize_head:  # the batch's pooled features at zero mean, unit variance
        head = model.rate_heads[0]
        head.fc = torch.nn.Sequential(
            torch.nn.BatchNorm1d(head.fc.in_features, affine=False), head.fc
        )
    bf16 = cpu_has_native_bf16()
    if bf16:
        guard_cpu_bf16_conv3d(model)
    optimizer = make_optimizer(model, make_config("prp", "quick", lr=args.lr))  # PRP's SGD
    shape = INPUTS[args.input]

    def logits(batch: dict) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return model(shape(to_float(batch["clip"])))["logits"][0].float()  # (B, 4)

    for epoch in range(args.epochs):
        t0, right, seen = time.perf_counter(), 0, 0
        sampler.set_epoch(epoch)
        model.train()
        for batch in loader:
            out = logits(batch)
            loss = args.rate_weight * F.cross_entropy(out, batch["rate"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            right, seen = right + (out.argmax(1) == batch["rate"]).sum().item(), seen + len(out)
        model.eval()
        with torch.no_grad():
            hits = [logits(b).argmax(1) == b["rate"] for b in val_loader]
        held_out = torch.cat(hits).float().mean().item()
        row = dict(epoch=epoch + 1, train=round(right / seen, 3), held_out=round(held_out, 3))
        print(json.dumps({**row, "s": round(time.perf_counter() - t0)}), flush=True)


if __name__ == "__main__":
    main()
