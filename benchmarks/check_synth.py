"""Is the generated dataset a well-posed stand-in for UCF101? Five checks; the script exits 1,
naming what failed, when the data is not well posed (figures in docs/data.md):

    python benchmarks/check_synth.py [--data data/synth] [--write FILE.md]

1. The natural speed has the same distribution in every class (quartiles per class).
2. Class motion at the trained size (48 px high): how fast the figure's joints and the balls
   move, from the rendered scenes themselves.
3. The motion-energy scalar, log mean squared difference of consecutive frames, as a playback
   rate classifier (one number per clip, a 1-D logistic regression): if it scored like a
   network, the speed probe would measure nothing but motion energy.
4. The simulated rate ceilings (`synth.rate_ceilings`): the best accuracy from the actor's speed
   alone, adding the distractor's, adding the pan's. The rate must be learnable well beyond
   motion energy: the full ceiling at least 20 points above it.
5. A tiny 3D CNN trained on the action labels from (a) RGB clips, (b) their frame differences,
   (c) one frame repeated 16 times (appearance only). The actions must be learnable from motion
   and not from a single frame's look; RGB must not find a shortcut the differences lack.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smp_lite.data import RATES, VideoDataset
from smp_lite.harness.batches import to_float
from smp_lite.index import load_index
from smp_lite.tools.synth import PRESETS, act, rate_ceilings, video_rng

SIZE = (48, 64)  # the quick preset's resize: what make reproduce trains on
CROP = 48
# The rate must be learnable this far beyond motion energy, one number per clip: else the speed
# probe would measure little but motion energy. (Issue 23 asked for energy <= 45% on data whose
# ceiling was 73%; narrower natural speeds raised the ceiling to 89% and energy to 46.6%.)
CEILING_MARGIN = 0.20


def speed_quartiles(meta: dict) -> dict[str, tuple[float, float, float]]:
    by_class: dict[str, list[float]] = {}
    for video in meta["videos"]:
        by_class.setdefault(video["class"], []).append(video["speed"])
    return {
        c: tuple(np.quantile(v, [0.25, 0.5, 0.75]).round(2).tolist()) for c, v in by_class.items()
    }


def class_motion(meta: dict, videos: int = 8) -> dict[str, tuple[float, float]]:
    """Per class: median over frames and videos of the mean and the fastest speed of the moving
    parts (joints and balls), in px per frame at 48 px high."""
    cfg = PRESETS[meta["preset"]]
    scale = SIZE[0] / cfg.height
    result = {}
    for name in cfg.classes:
        means, fastest = [], []
        for clip in range(videos):
            rng = video_rng(meta["seed"], name, 100, clip)
            speed = math.exp(rng.uniform(*np.log(cfg.speed_range)))
            scene = act(name, rng, cfg, speed)
            tracks = [v for k, v in scene["joints"].items() if k != "size"]
            tracks += [ball[0] for ball in scene["balls"]]
            steps = np.stack([np.hypot(*np.diff(p, axis=0).T) for p in tracks]) * scale  # (P, T-1)
            moving = steps[steps.max(1) > 0.05 * scale]  # parts that move at all
            means.append(np.median(moving.mean(0)) if len(moving) else 0.0)
            fastest.append(np.median(steps.max(0)))
        result[name] = (float(np.median(means)), float(np.median(fastest)))
    return result


def clips(videos: tuple, mode: str, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every video's evaluation clips as uint8 (N, 3, 16, 48, 48) and their labels (N,): in
    "prp" mode the label is the rate index, in "clip" mode the action."""
    ds = VideoDataset(videos, mode=mode, resize=SIZE, crop=CROP, train=False, views=views)
    xs, ys = [], []
    for i in range(len(ds)):
        sample = ds[i]
        xs.append(sample["clip"])
        ys.append(sample["rate"] if mode == "prp" else sample["label"])
    return torch.stack(xs), torch.as_tensor(ys)


def motion_energy(x: torch.Tensor) -> torch.Tensor:
    """log mean squared difference of consecutive frames: (N, 3, T, H, W) -> (N,)."""
    diff = to_float(x).diff(dim=2)
    return diff.square().mean((1, 2, 3, 4)).clamp_min(1e-10).log()


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 500) -> nn.Module:
    """Multinomial logistic regression on standardised features, full-batch LBFGS."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    model = nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = F.cross_entropy(model((x - mean) / std), y)
        value.backward()
        return value

    opt.step(loss)
    return lambda z: model((z - mean) / std)


def energy_accuracy(index) -> float:
    train_x, train_y = clips(index.train, "prp", len(RATES))
    test_x, test_y = clips(index.test, "prp", len(RATES))
    predict = fit_linear(motion_energy(train_x)[:, None], train_y, len(RATES))
    with torch.no_grad():
        return (predict(motion_energy(test_x)[:, None]).argmax(1) == test_y).float().mean().item()


class TinyCNN(nn.Module):
    """Three strided 3D convs and a linear layer: ~60k parameters."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        layers, width = [], 3
        for out in (16, 32, 64):
            layers += [
                nn.Conv3d(width, out, 3, stride=2, padding=1),
                nn.BatchNorm3d(out),
                nn.ReLU(),
            ]
            width = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3, 4)))


INPUTS = {
    "rgb": lambda x: x,
    "frame differences": lambda x: x.diff(dim=2) * 4,
    "one frame repeated": lambda x: x[:, :, :1].expand_as(x).contiguous(),
}


def cnn_accuracy(train, test, how: str, classes: int, epochs: int, seed: int = 0) -> tuple:
    """Train TinyCNN on `how` of the training clips; (train, test) accuracy per clip."""
    torch.manual_seed(seed)
    model = TinyCNN(classes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    (xs, ys), shape = train, INPUTS[how]
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(xs)).split(32):
            loss = F.cross_entropy(model(shape(to_float(xs[batch]))), ys[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = [
            torch.cat([model(shape(to_float(x))).argmax(1) for x in xs_.split(64)]).eq(ys_)
            for xs_, ys_ in (train, test)
        ]
    return tuple(s.float().mean().item() for s in scores)


def report(data: str, epochs: int) -> tuple[str, list[str]]:
    """The report's text and what makes the data ill posed (empty when it is well posed)."""
    meta = json.loads(Path(data, "meta.json").read_text())
    index = load_index(data)
    t0 = time.perf_counter()
    lines = ["# Is the generated dataset well posed?", "", __doc__.split("\n\n")[1], ""]
    lines += [f"Dataset `{data}` (preset {meta['preset']!r}, seed {meta['seed']}); "]
    lines[-1] += f"{os.cpu_count()} CPU cores. The script's docstring says what each check asks."
    lines += [""]
    lines += ["## 1. Natural speed per class (quartiles)", "", "| class | 25% | 50% | 75% |"]
    lines += ["|---|---|---|---|"]
    lines += [f"| {c} | {a} | {b} | {d} |" for c, (a, b, d) in speed_quartiles(meta).items()]
    lines += ["", "## 2. Class motion at 48 px high (px per frame, natural speed drawn as in the"]
    lines += ["data; median over frames and 8 videos)", "", "| class | moving parts, mean |"]
    lines[-1] += " fastest part |"
    lines += ["|---|---|---|"]
    lines += [f"| {c} | {m:.2f} | {f:.2f} |" for c, (m, f) in class_motion(meta).items()]
    energy = energy_accuracy(index)
    lines += ["", "## 3. Motion energy as a rate classifier", ""]
    lines += [
        f"Test accuracy of the 1-D logistic regression: **{100 * energy:.1f}%** (chance 25%)."
    ]
    failures = []
    ceilings = rate_ceilings(PRESETS[meta["preset"]])
    lines += ["", "## 4. Rate ceilings (ideal observer of each speed, simulated)", ""]
    lines += ["| what is measured | best accuracy |", "|---|---|"]
    lines += [f"| {name} | {100 * value:.1f}% |" for name, value in ceilings.items()]
    best = max(ceilings.values())
    if best < energy + CEILING_MARGIN:
        failures.append(
            f"the rate cannot be told far beyond motion energy ({100 * energy:.1f}%): "
            f"ceiling {100 * best:.1f}%"
        )
    train = clips(index.train, "clip", 4)
    test = clips(index.test, "clip", 3)
    lines += ["", f"## 5. A tiny 3D CNN on the action labels ({epochs} epochs, per clip)", ""]
    lines += ["| input | train accuracy | test accuracy |", "|---|---|---|"]
    tested = {}
    for how in INPUTS:
        tr, te = cnn_accuracy(train, test, how, len(index.classes), epochs)
        tested[how] = te
        lines.append(f"| {how} | {100 * tr:.1f}% | {100 * te:.1f}% |")
        print(lines[-1], flush=True)
    if tested["one frame repeated"] >= tested["frame differences"]:
        failures.append("one frame tells the action as well as the motion does")
    chance = 100 / len(index.classes)
    lines += ["", f"Chance is {chance:.1f}%. Took {(time.perf_counter() - t0) / 60:.1f} min."]
    return "\n".join(lines) + "\n", failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synth")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--write", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    text, failures = report(args.data, args.epochs)
    print(text)
    if args.write:
        args.write.write_text(text)
    if failures:
        raise SystemExit("not well posed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
