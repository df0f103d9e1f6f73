"""Does the linear probe measure what the features hold, or how large they are?

    python benchmarks/probe_feature_scale.py runs/reproduce-synth/probe-speed-*

For each speed or action probe run folder given, prints the spread of the features it cached
(features.pt: the std over the training clips, averaged over the dimensions) beside its test
accuracy and, where `make reproduce` ran it, that of the same probe on the same features
standardised (its `probe-speed-std-*` folder; any probe can be retrained so with `smp-lite
probe --features FOLDER --standardize`). Plain SGD with one learning rate moves a linear
layer's output in proportion to the square of its inputs' scale, so features 100x smaller
train ~10^4x slower in the same number of steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def accuracy(folder: Path) -> str:
    results = folder / "results.json"
    if not results.is_file():
        return "not run"
    return f"{100 * json.loads(results.read_text())['accuracy']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="probe run folders with features.pt")
    args = parser.parse_args()
    print("| probe run | feature std over clips | as cached (%) | standardised (%) |")
    print("|---|---|---|---|")
    for folder in [f for f in args.runs if "-std-" not in f.name]:
        cached = torch.load(folder / "features.pt")
        spread = cached["train"]["output"].std(0).mean().item()
        standardised = folder.with_name(folder.name.replace("probe-speed-", "probe-speed-std-"))
        print(f"| {folder.name} | {spread:.4f} | {accuracy(folder)} | {accuracy(standardised)} |")


if __name__ == "__main__":
    main()
