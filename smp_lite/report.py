"""Results of training runs as a table and a picture, from their metrics.jsonl and config.json.

`pretrain_table(runs)` gives a markdown table of each run's held-out accuracy (the c5 rate head
for PRP and SMP, the action head for supervised runs) at best.pt and at the last epoch;
`plot_curves(runs, png)` draws the per-epoch validation and training accuracy of each run.
`smp-lite report RUN...` prints the one and writes the other; `make reproduce` calls it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import read_metrics
from .errors import TrainError


def pretrain_table(runs: list[str | Path]) -> str:
    """One markdown row per run: accuracies in %, best.pt being the lowest validation loss."""
    lines = [
        "| run | arch | task | epochs | best.pt: epoch, val acc | last val acc | "
        "mean of last 3 | MG heads c4 / c3 / c2, last | at rate 1 / 2 / 4 / 8, last | "
        "last train acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        config, rows = read_run(run)
        head = main_head(rows)
        best = min(rows, key=lambda r: r.get("val_loss", r["train_loss"]))
        last = rows[-1]
        tail = [r[f"val_acc_{head}"] for r in rows[-3:]]
        mg = "-"  # PRP and supervised runs have no multiple-granularity heads
        if "val_acc_rate_c4" in last:
            mg = " / ".join(pct(last[f"val_acc_rate_{c}"]) for c in ("c4", "c3", "c2"))
        at_rate = "-"  # the c5 head's accuracy at each playback rate (motion tasks)
        if "val_acc_at_rate_1" in last:
            at_rate = " / ".join(pct(last[f"val_acc_at_rate_{r}"]) for r in (1, 2, 4, 8))
        lines.append(
            f"| {Path(run).name} | `{config['arch']}` | {config['task']} | {last['epoch']} | "
            f"{best['epoch']}: {pct(best[f'val_acc_{head}'])} | {pct(last[f'val_acc_{head}'])} | "
            f"{pct(sum(tail) / len(tail))} | {mg} | {at_rate} | "
            f"{pct(last[f'train_acc_{head}'])} |"
        )
    return "\n".join(lines)


def plot_curves(runs: list[str | Path], out_png: str | Path) -> Path:
    """Validation (solid) and training (dashed) accuracy of each run's main head per epoch."""
    from matplotlib.figure import Figure  # no pyplot: works headless, no global state

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    heads = set()
    for i, run in enumerate(runs):
        _, rows = read_run(run)
        head = main_head(rows)
        heads.add(head)
        epochs = [r["epoch"] for r in rows]
        color = f"C{i}"
        val = [100 * r[f"val_acc_{head}"] for r in rows]
        ax.plot(epochs, val, "-o", color=color, ms=3, label=f"{Path(run).name} (val)")
        train = [100 * r[f"train_acc_{head}"] for r in rows]
        ax.plot(epochs, train, "--", color=color, alpha=0.6)
    if "rate_c5" in heads:
        ax.axhline(25, color="gray", lw=0.8, ls=":", label="chance (4 rates)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%), dashed: training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png


def read_run(run: str | Path) -> tuple[dict, list[dict]]:
    """(config.json, metrics rows) of a run folder with at least one finished epoch."""
    run = Path(run)
    if not (run / "metrics.jsonl").is_file() or not (run / "config.json").is_file():
        raise TrainError(f"{run} is not a run folder: it has no metrics.jsonl and config.json")
    rows = read_metrics(run)
    if not rows:
        raise TrainError(f"{run} has no finished epoch yet")
    if "val_loss" not in rows[-1]:
        raise TrainError(f"{run} has no validation metrics (it was run with --val-fraction 0)")
    try:
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except ValueError as err:  # JSON or UTF-8
        raise TrainError(f"{run / 'config.json'} is not readable JSON: {err}") from None
    return config, rows


def main_head(rows: list[dict]) -> str:
    return "rate_c5" if "val_acc_rate_c5" in rows[-1] else "action"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"
