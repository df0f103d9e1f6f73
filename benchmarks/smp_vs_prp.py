"""SMP against PRP, the SMP paper's own claim, on every evaluation of `make reproduce`: the
difference of the two initialisations' accuracy (retrieval: top-1) with its paired bootstrap
std, the same test groups and videos drawn for both (docs/reproduce.md).

    python benchmarks/smp_vs_prp.py [--runs runs/reproduce-synth]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from smp_lite.evaluate import paired_bootstrap_std

KINDS = ("probe-speed", "probe-action", "finetune", "retrieve")


def correctness(result: dict) -> tuple[float, list[int]]:
    """Accuracy and each test item's correctness (retrieval: hit at top-1)."""
    if "hits" in result:
        return result["top_k"]["1"], result["hits"]["1"]
    return result["accuracy"], result["correct"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/reproduce-synth"))
    args = parser.parse_args()
    print("| evaluation | arch | SMP - PRP (points) |\n|---|---|---|")
    for kind in KINDS:
        for arch in ("c3d", "r3d10", "r21d10", "r3d18"):
            paths = [
                args.runs / f"{kind}-{arch}-{init}" / "results.json" for init in ("smp", "prp")
            ]
            if not all(path.is_file() for path in paths):
                continue
            smp, prp = (json.loads(path.read_text()) for path in paths)
            (acc_smp, hit_smp), (acc_prp, hit_prp) = correctness(smp), correctness(prp)
            videos = torch.tensor(smp["video"])
            spread = paired_bootstrap_std(
                torch.tensor(hit_smp), torch.tensor(hit_prp), videos, smp["group"], seed=0
            )
            print(f"| {kind} | `{arch}` | {100 * (acc_smp - acc_prp):+.1f} ± {100 * spread:.1f} |")


if __name__ == "__main__":
    main()
