"""Results of runs as tables and a picture, from their config.json, metrics.jsonl and
results.json: `smp-lite report RUN...` prints `report_text` and draws `plot_curves`;
`make reproduce` writes Table 1, Table 2, retrieval and their pictures (`write_reproduce_report`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import MOTION_ENERGY, TASKS
from ..data import open_video, read_frames
from ..errors import TrainError
from ..evaluate import paired_bootstrap_std
from ..harness.checkpoint import CONFIG, METRICS, RESULTS
from ..harness.folders import json_text, read_metrics
from ..index import load_index


def report_text(runs: list[str | Path]) -> tuple[str, list[str]]:
    """The tables of `runs` (pretrainings, then evaluations: any mix) and one note per thing a
    run cannot show that a pretraining would."""
    read = [(run, *read_run(run)) for run in runs]
    pretrainings = [run for run, config, _ in read if config["task"] in TASKS]
    evaluations = [run for run, config, _ in read if config["task"] not in TASKS]
    tables = [pretrain_table(pretrainings)] if pretrainings else []
    tables += [eval_table(evaluations)] if evaluations else []
    notes = [note for run, config, rows in read for note in run_notes(run, config, rows)]
    return "\n\n".join(tables), notes


PRETRAIN_LEGEND = (
    "Accuracies on held-out groups (val) at the end of an epoch, of the main head (the c5 rate "
    "head; supervised: the action); best.pt is the epoch of lowest validation loss; mean of "
    "last 3 smooths the epoch-to-epoch noise; last train acc is over the last epoch's training "
    "batches."
)


def pretrain_table(runs: list[str | Path]) -> str:
    """One markdown row per run: accuracies in %, best.pt being the lowest validation loss (the
    training loss, and "-" for held-out numbers, in a run without validation)."""
    lines = [
        "| run | arch | task | epochs | best.pt: epoch, val acc | last val acc | "
        "mean of last 3 | MG heads c4 / c3 / c2, last | at rate 1 / 2 / 4 / 8, last | "
        "last train acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        config, rows = read_run(run)
        head = main_head(rows)
        val, last = f"val_acc_{head}", rows[-1]
        best = min(rows, key=lambda r: r.get("val_loss", r["train_loss"]))
        tail = [r[val] for r in rows[-3:] if val in r]
        mean = pct(sum(tail) / len(tail)) if tail else "-"
        # SMP's multiple-granularity heads; the c5 head at each playback rate (motion tasks)
        mg = slash_cell(last, [f"val_acc_rate_{c}" for c in ("c4", "c3", "c2")])
        at_rate = slash_cell(last, [f"val_acc_at_rate_{r}" for r in (1, 2, 4, 8)])
        lines.append(
            f"| {Path(run).name} | `{config['arch']}` | {config['task']} | "
            f"{epochs_cell(last['epoch'], config)} | {best['epoch']}: {cell(best, val)} | "
            f"{cell(last, val)} | {mean} | {mg} | {at_rate} | {cell(last, f'train_acc_{head}')} |"
        )
    return "\n".join([*lines, "", PRETRAIN_LEGEND])


EVAL_LEGEND = (
    "last train / test-clip acc: the metrics row of the last epoch, per clip, as training "
    "logged it (a probe tests every epoch; fine-tuning tests only at the end). result: "
    "results.json, the final weights on every test item (per video for action, averaging its "
    "clips), ± the bootstrap std over test groups, then videos."
)


def eval_table(runs: list[str | Path]) -> str:
    """One markdown row per evaluation run: its result (results.json) and its last epoch (a
    probe validates on the test clips; fine-tuning and retrieval validate on nothing)."""
    lines = [
        "| run | arch | kind | init | epochs | last train acc | last test-clip acc | result (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        config, rows = read_run(run)
        last = rows[-1] if rows else {}
        head = main_head(rows) if rows else ""
        arch = "-" if config.get("init") == MOTION_ENERGY else f"`{config['arch']}`"
        epochs = epochs_cell(last["epoch"], config) if last else "-"
        # random, motion-energy, or a checkpoint as its run folder's name and file
        init = Path(str(config.get("init", "random")))
        init = init.name if len(init.parts) < 2 else f"{init.parent.name}/{init.name}"
        lines.append(
            f"| {Path(run).name} | {arch} | {config['task']} | {init} | {epochs} | "
            f"{cell(last, f'train_acc_{head}')} | {cell(last, f'val_acc_{head}')} | "
            f"{result_cell(read_results(run))} |"
        )
    return "\n".join([*lines, "", EVAL_LEGEND])


def epochs_cell(done: int, config: dict) -> str:
    """ "10", or "1 of 10 (not finished)" for a run stopped or still running."""
    planned = config.get("epochs", done)
    return str(done) if done >= planned else f"{done} of {planned} (not finished)"


def result_cell(results: dict | None) -> str:
    """An evaluation's result in %: accuracy ± its bootstrap std, or the top-k hit rates."""
    if results is None:
        return "not finished"
    if "top_k" in results:
        spread = results.get("top_k_std", {})
        return ", ".join(
            f"top-{k} {100 * v:.1f}" + (f" ± {100 * spread[k]:.1f}" if k in spread else "")
            for k, v in results["top_k"].items()
        )
    text = f"{100 * results['accuracy']:.1f}"
    text += f" ± {100 * results['accuracy_std']:.1f}" if "accuracy_std" in results else ""
    return text + (f" ({results['items']} test items)" if "items" in results else "")


def run_notes(run: str | Path, config: dict, rows: list[dict]) -> list[str]:
    """What a run cannot show, one line each."""
    name, task, notes = Path(run).name, config["task"], []
    if task in TASKS and "val_loss" not in rows[-1]:
        notes.append(f"{name}: no held-out accuracy (run with --val-fraction 0)")
    if task not in TASKS and not (Path(run) / RESULTS).is_file():
        notes.append(f"{name}: no results.json yet (running, stopped or failed)")
    if task == "finetune":
        notes.append(
            f"{name}: fine-tuning validates on nothing: per epoch, training accuracy only; "
            "the test videos' is the result"
        )
    if task == "retrieve":
        notes.append(f"{name}: retrieval trains nothing: no epochs, no curve")
    return notes


def plot_curves(runs: list[str | Path], out_png: str | Path) -> Path:
    """Per epoch, the held-out accuracy (solid: pretraining's validation, a probe's test clips)
    and training accuracy (dashed) of each run's main head; pretrainings and evaluations on
    axes of their own (their epochs are not the same thing); runs without epochs left out."""
    read = [(i, run, *read_run(run)) for i, run in enumerate(runs)]
    groups = {
        "pretraining": [r for r in read if r[3] and r[2]["task"] in TASKS],
        "evaluation": [r for r in read if r[3] and r[2]["task"] not in TASKS],
    }
    groups = {title: group for title, group in groups.items() if group}
    fig = new_figure(7 * max(1, len(groups)), 4)
    axes = fig.subplots(1, max(1, len(groups)), squeeze=False)[0]  # one empty axis if none
    for ax, (title, group) in zip(axes, groups.items(), strict=False):
        draw_curves(ax, group)
        ax.set_title(f"{title} epochs", fontsize=10)
    save_figure(fig, Path(out_png))
    return Path(out_png)


def draw_curves(ax, runs: list[tuple[int, Path, dict, list[dict]]]) -> None:
    """`plot_curves`' lines for (colour index, run, config, rows) on one axis."""
    heads = set()
    for i, run, config, rows in runs:
        head = main_head(rows)
        heads.add(head)
        epochs, color, name = [r["epoch"] for r in rows], f"C{i}", Path(run).name
        held_out = "val" if config["task"] in TASKS else "test clips"
        if f"val_acc_{head}" in rows[-1]:
            val = [100 * r[f"val_acc_{head}"] for r in rows]
            ax.plot(epochs, val, "-o", color=color, ms=3, label=f"{name} ({held_out})")
            style, label = "--", "_"  # "_": no legend entry, the solid line has it
        else:  # the training line alone: in the legend, with points (one epoch is one point)
            style, label = "--o", f"{name} (train)"
        train = [100 * r[f"train_acc_{head}"] for r in rows]
        ax.plot(epochs, train, style, color=color, ms=3, alpha=0.6, label=label)
    if heads & {"rate_c5", "speed"}:
        ax.axhline(25, color="gray", lw=0.8, ls=":", label="chance (4 rates)")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("accuracy (%), dashed: training")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def read_run(run: str | Path) -> tuple[dict, list[dict]]:
    """(config.json, metrics rows) of a run folder: a pretraining with a finished epoch, or an
    evaluation with one or its results.json (a retrieval has no rows)."""
    run = Path(run)
    if not (run / CONFIG).is_file():
        raise TrainError(f"{run} is not a run folder: it has no metrics.jsonl and config.json")
    config = read_json(run / CONFIG)
    if not isinstance(config, dict) or not {"arch", "task"} <= set(config):
        raise TrainError(f"{run / CONFIG} is not a smp-lite run's: it names no arch and task")
    rows = read_metrics(run) if (run / METRICS).is_file() else []
    if not rows and (config["task"] in TASKS or not (run / RESULTS).is_file()):
        missing = RESULTS if config["task"] == "retrieve" else "finished epoch"
        raise TrainError(f"{run} has no {missing} yet")
    return config, rows


def read_results(run: str | Path) -> dict | None:
    """An evaluation's results.json, or None before it has finished."""
    path = Path(run) / RESULTS
    if not path.is_file():
        return None
    results = read_json(path)
    if not isinstance(results, dict) or not {"accuracy", "top_k"} & set(results):
        raise TrainError(f"{path} is not an evaluation's results: no accuracy or top_k")
    return results


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSON or UTF-8
        raise TrainError(f"{path} is not readable JSON: {err}") from None


def main_head(rows: list[dict]) -> str:
    """The head a run is judged by: the c5 rate head (PRP, SMP), the speed probe's, or the
    action head (supervised pretraining, action probe, fine-tuning)."""
    for head in ("rate_c5", "speed"):
        if f"train_acc_{head}" in rows[-1]:
            return head
    return "action"


def cell(row: dict, key: str) -> str:
    return pct(row[key]) if key in row else "-"


def slash_cell(row: dict, keys: list[str]) -> str:
    """ "a / b / c", or "-" for a run without these heads."""
    return " / ".join(pct(row[key]) for key in keys) if keys[0] in row else "-"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: works headless, no global state

    return Figure(figsize=(width, height), dpi=100)


def save_figure(fig, png: Path) -> None:
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


# ---------------------------------------------------------------------------------------------
# make reproduce: Table 1, Table 2, retrieval, and their pictures from summary.json (older
# summaries, without the newer probes or per-item correctness, still render)

INIT_NAMES = {"random": "Random", "supervised": "Fully-supervised", "prp": "PRP", "smp": "SMP"}
ENERGY, ENERGY_NAME = "probe-speed-energy", "Motion energy (no network)"  # one result, no arch
FAMILY = {
    "c3d": "C3D",
    "r3d10": "R3D-10",  # the papers' R3D, SMP's "3D-R18": one block a stage
    "r21d10": "R(2+1)D-10",
    "r3d18": "R3D-18",  # torchvision's r3d_18
    "r21d18": "R(2+1)D-18",
}
CEILING_NAMES = {  # tools/synth.rate_ceilings's keys
    "actor": "Ceiling: the actor's speed",
    "actor + distractor": "Ceiling: + the distractor's",
    "actor + distractor + pan": "Ceiling: + the camera's pan",
}


def write_reproduce_report(summary: dict, runs: Path, results: Path) -> None:
    """summary.json, table1.md, table2.md, retrieval.md, pretrain.md and the pictures."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.json").write_text(json_text(summary, indent=1))
    (results / "table1.md").write_text(table1(summary))
    (results / "table2.md").write_text(table2(summary))
    (results / "retrieval.md").write_text(retrieval_table(summary))
    pretrained = sorted(p.parent for p in runs.glob(f"pretrain-*/{METRICS}"))
    pretrained = [run for run in pretrained if read_metrics(run)]
    if pretrained:
        (results / "pretrain.md").write_text(pretrain_table(pretrained) + "\n")
        plot_pretraining(summary, runs, results / "pretrain_curves.png")
    plot_table1(summary, results / "table1.png")
    plot_speed_confusions(summary, results / "speed_confusion.png")
    plot_neighbours(summary, results / "retrieval_neighbours.png")


def accuracy_cell(numbers: dict | None, random: dict | None) -> str:
    """ "48.8 ± 1.1 (+6.3 ± 0.9)": accuracy in %, its bootstrap std, the difference to random
    init and its paired bootstrap std (none where a result predates per-item correctness)."""
    if not numbers:
        return "not run yet"
    text = f"{100 * numbers['accuracy']:.1f} ± {100 * numbers['accuracy_std']:.1f}"
    if not random or numbers is random:
        return text
    text += f" ({100 * (numbers['accuracy'] - random['accuracy']):+.1f}"
    if "correct" in numbers and "correct" in random and numbers["video"] == random["video"]:
        correct, base = torch.tensor(numbers["correct"]), torch.tensor(random["correct"])
        video, group = torch.tensor(numbers["video"]), numbers["group"]
        text += f" ± {100 * paired_bootstrap_std(correct, base, video, group, seed=0):.1f}"
    return text + ")"


def md_row(first: str, cells: list[str]) -> str:
    return f"| {first} | " + " | ".join(cells) + " |"


def header(columns: list[str]) -> list[str]:
    """A table's first two lines: "Initialisation", then `columns`."""
    return [md_row("Initialisation", columns), "|---" * (len(columns) + 1) + "|"]


def archs_of(summary: dict, kind: str) -> list[str]:
    """The backbones an evaluation ran on: all, or for the BatchNorm-refit probe the profile's."""
    if kind == "probe-speed-bn":
        return summary.get("refit_bn_archs", summary["archs"])
    return summary["archs"]


def arch_header(archs: list[str]) -> list[str]:
    return header([f"{FAMILY.get(a, a)} (`{a}`)" for a in archs])


def init_table(summary: dict, kind: str) -> list[str]:
    """A table of one row per initialisation, one column per backbone evaluated so."""
    archs = archs_of(summary, kind)
    lines = arch_header(archs)
    for init, name in INIT_NAMES.items():
        by_arch = [summary.get(kind, {}).get(a, {}) for a in archs]  # older: no newer probes
        lines.append(md_row(name, [accuracy_cell(b.get(init), b.get("random")) for b in by_arch]))
    return lines


def profile_line(summary: dict) -> str:
    return (
        f"Profile `{summary['profile']}` on `{summary['data']}`, {summary['device']}; all steps "
        f"together took {summary['seconds'] / 60:.0f} min (summary.json has each step's time)."
    )


def table1(summary: dict) -> str:
    archs = summary["archs"]
    randoms = [summary["probe-speed"].get(a, {}).get("random") for a in archs]
    # motion energy: one result in every column, compared with each column's Random
    energy = md_row(ENERGY_NAME, [accuracy_cell(summary.get(ENERGY), r) for r in randoms])
    # a generated dataset's simulated ceilings: the same in every column
    ceilings = [
        md_row(CEILING_NAMES[name], [f"{100 * value:.1f}"] * len(archs))
        for name, value in summary.get("rate_ceilings", {}).items()
    ]
    refit = ["Not run: the profile re-estimates BatchNorm on none of these backbones."]
    if archs_of(summary, "probe-speed-bn"):  # a profile may run it on some backbones only
        refit = init_table(summary, "probe-speed-bn")
    lines = [
        "# Table 1: speed discrimination by linear probing",
        "",
        profile_line(summary),
        "",
        "Accuracy (%) of a linear layer on the frozen backbone's pooled c5 feature at telling the",
        "playback rate (1, 2, 4 or 8) of a test clip; every test video at each rate once. ± is",
        "the std over 1000 bootstrap resamplings of the test groups, then of the videos within",
        "each drawn group (a group's videos share look and camera); (+x) is the difference to",
        "Random, as the seed prints it, ± its std over resamplings that draw the same groups",
        "and videos for both rows (paired). Chance is 25%. The last row has no network: the same",
        "linear layer on one number per clip, the log mean squared difference between its",
        "consecutive frames (standardised); it is the same in every column, compared with each",
        "one's Random:",
        "",
        *init_table(summary, "probe-speed"),
        energy,
        *ceilings,
        "",
        *(CEILING_NOTE if ceilings else []),
        "The same linear layer trained on the same cached features standardised (each dimension",
        "less the training clips' mean, over their std; not the seed's protocol). With plain SGD",
        "at one learning rate a layer learns faster on larger features, so the table above ranks",
        "features by their scale as well as by what they hold; this one does not:",
        "",
        *init_table(summary, "probe-speed-std"),
        "",
        "BatchNorm statistics re-estimated on training clips (weights frozen): before caching the",
        "features, each BatchNorm layer's running mean and variance are recomputed over batches",
        "of the probe's training clips (`refit_bn` in each run's config.json); the features are",
        "then taken in eval mode and the linear layer trained on them as cached. Random weights",
        "otherwise keep BatchNorm's initial statistics (0 and 1), under which their features",
        "barely vary; the seed's Random row (41-42%) most likely saw normalised activations:",
        "",
        *refit,
        "",
        *per_rate_lines(summary),
        "",
        *SEED_LINES,
    ]
    return "\n".join(lines) + "\n"


CEILING_NOTE = [
    "The ceilings are simulated, no video involved: the best any classifier can do that",
    "measures exactly the actor's speed, then also the distractor ball's, then also the",
    "camera's pan, given the ranges the generator draws them from (`tools/synth.py`,",
    "`rate_ceilings`). A network beats motion energy only by telling these speeds apart.",
    "",
]

SEED_LINES = [  # docs/method.md section 4, as the seed prints it
    "The seed's published rows (UCF101 split 1, 112x112 clips, not this data):",
    "",
    "| Initialisation | C3D | 3D-R18 | R(2+1)D |",
    "|---|---|---|---|",
    "| Random | 42.48 | 40.89 | 41.53 |",
    "| Fully-supervised | 48.83 (+6.35) | 45.97 (+5.08) | 51.27 (+9.74) |",
]


def per_rate_lines(summary: dict) -> list[str]:
    """The speed probe's accuracy at each rate (features as cached), motion energy's last."""
    archs, speed = summary["archs"], summary["probe-speed"]
    rows = {name: [speed.get(a, {}).get(init) for a in archs] for init, name in INIT_NAMES.items()}
    rows[ENERGY_NAME] = [summary.get(ENERGY)] * len(archs)
    lines = ["Accuracy (%) at each rate, 1 / 2 / 4 / 8 (features as cached):", ""]
    lines += arch_header(archs)
    for name, results in rows.items():
        cells = [
            " / ".join(f"{100 * v:.0f}" for v in numbers["per_class"].values())
            if numbers
            else "not run yet"
            for numbers in results
        ]
        lines.append(md_row(name, cells))
    return lines


def table2(summary: dict) -> str:
    lines = ["# Table 2: action recognition", "", profile_line(summary), ""]
    for kind, title, how in (
        ("probe-action", "Linear probe", "a linear layer on the frozen pooled c5 feature"),
        ("finetune", "Fine-tuning", "the whole network trained on the action labels"),
    ):
        lines += [
            f"## {title}",
            "",
            f"Accuracy (%) per test video: {how}, logits averaged over its clips.",
            "± is the bootstrap std over test groups, then videos within them; (+x ± s) the",
            "difference to Random and its std over draws of the same groups and videos for both",
            "rows (paired).",
            "",
            *init_table(summary, kind),
            "",
        ]
    return "\n".join(lines)


def retrieval_table(summary: dict) -> str:
    lines = [
        "# Video retrieval",
        "",
        profile_line(summary),
        "",
        "Top-k hit rate (%): a test video hits when one of its k most similar training videos",
        "(cosine similarity of the clip-averaged 9216-d retrieval feature) has its class; ±",
        "bootstrap std over test groups, then videos within them; (+x ± s) the difference to",
        "Random and its std over draws of the same groups and videos for both rows (paired).",
        "",
    ]
    for arch in summary["archs"]:
        by_init = summary["retrieve"].get(arch, {})
        lines += [f"## {FAMILY.get(arch, arch)} (`{arch}`)", ""]
        if not by_init:
            lines += ["Not run yet.", ""]
            continue
        ks = next(iter(by_init.values()))["top_k"]
        lines += header([f"top-{k}" for k in ks])
        random = by_init.get("random")
        for init, name in INIT_NAMES.items():
            base = None if init == "random" else random
            cells = [accuracy_cell(at_k(by_init.get(init), k), at_k(base, k)) for k in ks]
            lines.append(md_row(name, cells))
        lines.append("")
    return "\n".join(lines)


def at_k(numbers: dict | None, k: str) -> dict | None:
    """A retrieval result at top-k as an accuracy result (with each query's hit, if it has them)."""
    if not numbers:
        return None
    hits = {}
    if "hits" in numbers:
        hits = {"correct": numbers["hits"][k], "video": numbers["video"], "group": numbers["group"]}
    return {"accuracy": numbers["top_k"][k], "accuracy_std": numbers["top_k_std"][k], **hits}


def plot_table1(summary: dict, png: Path) -> None:
    """Table 1 as grouped bars, one group per backbone, with the bootstrap std as error bars:
    the features as cached, standardised, and after BatchNorm re-estimation; motion energy
    (no network) as a dashed line."""
    fig = new_figure(16, 3.8)
    panels = {
        "probe-speed": "features as cached",
        "probe-speed-std": "standardised",
        "probe-speed-bn": "BatchNorm re-estimated",
    }
    width, energy = 0.8 / len(INIT_NAMES), summary.get(ENERGY)
    for ax, (kind, how) in zip(fig.subplots(1, 3, sharey=True), panels.items(), strict=True):
        archs = archs_of(summary, kind)
        for i, (init, name) in enumerate(INIT_NAMES.items()):
            numbers = [summary.get(kind, {}).get(a, {}).get(init) for a in archs]
            xs = [j + (i - 1.5) * width for j, n in enumerate(numbers) if n]
            ys = [100 * n["accuracy"] for n in numbers if n]
            errs = [100 * n["accuracy_std"] for n in numbers if n]
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=name, color=f"C{i}")
        if energy:
            ax.axhline(100 * energy["accuracy"], color="black", lw=1, ls="--", label=ENERGY_NAME)
        ax.axhline(25, color="gray", lw=0.8, ls=":", label="chance")
        ax.set_xticks(range(len(archs)), [f"{FAMILY.get(a, a)}\n({a})" for a in archs])
        ax.set_xlim(-0.5, max(len(archs), 1) - 0.5)  # the same groups in a panel not run yet
        if not archs:  # the profile runs this probe on other backbones only
            ax.text(0.5, 0.5, "not run on these backbones", ha="center", transform=ax.transAxes)
        ax.set_title(f"Speed probe, {how} ({summary['profile']} profile)", fontsize=10)
    fig.axes[0].set_ylabel("speed probe accuracy (%)")
    fig.axes[0].legend(fontsize=8, ncol=3, loc="lower center")
    save_figure(fig, png)


def plot_pretraining(summary: dict, runs: Path, png: Path) -> None:
    """Per backbone, the held-out accuracy of each pretraining's main head per epoch."""
    fig = new_figure(4 * len(summary["archs"]), 3.4)
    axes = fig.subplots(1, len(summary["archs"]), squeeze=False)[0]
    for ax, arch in zip(axes, summary["archs"], strict=True):
        for i, task in enumerate(("supervised", "prp", "smp")):
            run = runs / f"pretrain-{task}-{arch}"
            rows = read_metrics(run) if (run / METRICS).is_file() else []
            if not rows or "val_loss" not in rows[-1]:
                continue
            head = main_head(rows)
            what = "action" if head == "action" else "rate (c5)"
            epochs = [r["epoch"] for r in rows]
            ax.plot(epochs, [100 * r[f"val_acc_{head}"] for r in rows], "-o", ms=3,
                    color=f"C{i + 1}", label=f"{INIT_NAMES[task]}: {what}")  # fmt: skip
        ax.set_title(f"{FAMILY.get(arch, arch)} ({arch})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out accuracy (%)")
    save_figure(fig, png)


def plot_speed_confusions(summary: dict, png: Path) -> None:
    """The speed probe's confusion matrix (rows: true rate, normalised) per backbone and init."""
    archs = summary["archs"]
    fig = new_figure(2.3 * len(INIT_NAMES), 2.3 * len(archs))
    axes = fig.subplots(len(archs), len(INIT_NAMES), squeeze=False)
    for row, arch in zip(axes, archs, strict=True):
        for ax, (init, name) in zip(row, INIT_NAMES.items(), strict=True):
            numbers = summary["probe-speed"].get(arch, {}).get(init)
            ax.set_xticks([])
            ax.set_yticks([])
            if not numbers:
                ax.set_title(f"{arch}, {name}: not run", fontsize=8)
                continue
            matrix = [[c / max(1, sum(line)) for c in line] for line in numbers["confusion"]]
            ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
            rates = list(numbers["per_class"])
            ax.set_xticks(range(len(rates)), rates, fontsize=7)
            ax.set_yticks(range(len(rates)), rates, fontsize=7)
            ax.set_title(f"{arch}, {name}: {100 * numbers['accuracy']:.0f}%", fontsize=8)
    fig.supxlabel("predicted rate", fontsize=9)
    fig.supylabel("true rate", fontsize=9)
    save_figure(fig, png)


def plot_neighbours(summary: dict, png: Path) -> None:
    """Retrieval from random weights and from SMP, for the profile's second backbone (the seed's
    3D-R18), drawn by `plot_neighbour_frames`."""
    archs = summary["archs"]
    arch = archs[1] if len(archs) > 1 else archs[0]
    shown = {INIT_NAMES[i]: summary["retrieve"].get(arch, {}).get(i) for i in ("random", "smp")}
    shown = {name: numbers for name, numbers in shown.items() if numbers}
    if shown:
        plot_neighbour_frames(shown, load_index(summary["data"]).root, png)


def plot_neighbour_frames(
    retrievals: dict[str, dict], root: Path, png: Path, queries: int = 4
) -> None:
    """A few test videos (left) and their five nearest training videos, as middle frames, for
    each named retrieval result (`evaluate.retrieve`'s, videos under `root`); a green title is
    a neighbour of the query's class, a red one of another class."""
    lists = next(iter(retrievals.values()))["neighbours"]
    picks = [lists[i * len(lists) // queries] for i in range(queries)]  # spread over classes
    fig = new_figure(1.6 * 6, 1.35 * queries * len(retrievals))
    axes = fig.subplots(queries * len(retrievals), 6, squeeze=False)
    for block, (name, numbers) in enumerate(retrievals.items()):
        found = {n["query"]: n for n in numbers["neighbours"]}
        for q, pick in enumerate(picks):
            row = axes[block * queries + q]
            near = found[pick["query"]]
            videos = [(pick["query"], pick["class"])]
            videos += list(zip(near["nearest"], near["classes"], strict=True))[:5]
            for j, (ax, (video, cls)) in enumerate(zip(row, videos, strict=False)):
                reader = open_video(Path(root) / video)
                ax.imshow(read_frames(reader, [len(reader) // 2], (96, 128))[0])  # middle frame
                ax.set_xticks([])
                ax.set_yticks([])
                label = f"{name}: query" if j == 0 else f"#{j}"
                color = "black" if j == 0 else ("green" if cls == pick["class"] else "red")
                ax.set_title(f"{label}\n{cls}", fontsize=7, color=color)
    save_figure(fig, png)
