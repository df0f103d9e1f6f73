"""Does the linear probe measure what the features hold, or how large they are?

    python benchmarks/probe_feature_scale.py runs/reproduce-synth/probe-speed-*

For each probe run folder given, retrains its linear layer on the features it cached
(features.pt) with its own settings (config.json), twice: on the features as they are (the
seed's protocol, what the run did) and with `--standardize` (each dimension less the training
clips' mean, over their std). Prints both test
accuracies and the features' spread over the training clips. Plain SGD with one learning rate
moves a linear layer's output in proportion to the square of its inputs' scale, so features
100x smaller train ~10^4x slower in the same number of steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from smp_lite.data import RATES
from smp_lite.engine import fit
from smp_lite.evaluate import ProbeConfig
from smp_lite.probe import probe_results, probe_run
from smp_lite.runtime import make_runtime


def retrained_accuracy(folder: Path, cached: dict, standardize: bool) -> float:
    config = json.loads((folder / "config.json").read_text())
    fields = {f.name for f in dataclasses.fields(ProbeConfig)}
    cfg = ProbeConfig(**{k: v for k, v in config.items() if k in fields})
    names = [str(r) for r in RATES] if cfg.target == "speed" else None
    if names is None:
        names = [str(i) for i in range(int(cached["train"]["label"].max()) + 1)]
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(cfg, out=out, resume=False, standardize=standardize)
        rt = make_runtime("cpu", cfg.precision, cfg.channels_last)
        run = probe_run(cfg, rt, Path(out), cached, names)
        fit(run, progress=False)
        return probe_results(cfg, run, cached, names)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="probe run folders with features.pt")
    args = parser.parse_args()
    print("| probe run | feature std over clips | as cached (%) | standardised (%) |")
    print("|---|---|---|---|")
    for folder in args.runs:
        cached = torch.load(folder / "features.pt")
        spread = cached["train"]["output"].std(0).mean().item()
        plain = retrained_accuracy(folder, cached, standardize=False)
        scaled = retrained_accuracy(folder, cached, standardize=True)
        print(f"| {folder.name} | {spread:.4f} | {100 * plain:.1f} | {100 * scaled:.1f} |")


if __name__ == "__main__":
    main()
