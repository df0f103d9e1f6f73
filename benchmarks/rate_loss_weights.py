"""PRP pretraining with the loss's two terms reweighted: does the reconstruction term keep a
backbone from learning the playback rate (docs/arch_sweep.md, R3D-18)? PRP's loss is
recon + 0.1 CE(rate) (method.md 2); this runs `smp-lite pretrain --task prp` with
recon_weight * recon + ce_weight * CE instead, everything else as the quick preset.

    python benchmarks/rate_loss_weights.py OUT [--arch r3d18] [--epochs 15] \
        [--recon-weight 0] [--ce-weight 0.1]
"""

from __future__ import annotations

import argparse
import functools

import torch.nn.functional as F

from smp_lite import train


def reweighted_loss(out, targets, lam, rate_fc, motion_loss, recon_weight, ce_weight):
    """PRP's loss with its terms weighted anew; the logged terms stay PRP's."""
    loss, terms = motion_loss(out, targets, lam, rate_fc)
    ce = F.cross_entropy(out["logits"][0].float(), targets["rate"])
    recon = loss - 0.1 * ce  # PRP has the c5 head alone: loss = recon + 0.1 ce
    return recon_weight * recon + ce_weight * ce, terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--arch", default="r3d18")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--recon-weight", type=float, default=0.0)
    parser.add_argument("--ce-weight", type=float, default=0.1)
    args = parser.parse_args()
    train.motion_loss = functools.partial(  # motion_step looks it up at each step
        reweighted_loss,
        motion_loss=train.motion_loss,
        recon_weight=args.recon_weight,
        ce_weight=args.ce_weight,
    )
    cfg = train.make_config(
        task="prp", arch=args.arch, preset="quick", epochs=args.epochs, out=args.out,
        overwrite=True, compile=False,
    )  # fmt: skip
    train.train(cfg, progress=False)


if __name__ == "__main__":
    main()
