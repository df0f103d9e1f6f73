"""Where the training loop waits for the GPU: every synchronisation of `engine.train_steps`
over a few SMP and supervised steps, by the line that makes it (torch.cuda's sync debug
mode), and whether torch.compile keeps one graph for every SMP mask weight lambda (a float
argument it could specialise on, which would recompile at every epoch).

    python benchmarks/sync_probe.py            (on a CUDA device; on a CPU it counts nothing)
"""

from __future__ import annotations

import collections
import traceback
import warnings

import torch
from torch._dynamo.utils import counters

from smp_lite.harness.engine import train_steps
from smp_lite.harness.runtime import make_runtime
from smp_lite.tools.bench import synthetic_batch
from smp_lite.train import build_model, make_config, make_optimizer, make_step, task_metrics


def sync_sites(task: str, steps: int = 3, batch_size: int = 8) -> collections.Counter:
    """(file:line in smp_lite, file:line of the call) -> synchronisations over `steps` steps."""
    cfg = make_config(task, "paper", arch="r3d18", batch_size=batch_size)
    runtime = make_runtime("auto", compile=False)
    model = runtime.wrap(runtime.prepare(build_model(cfg, 101)))
    optimizer, step = make_optimizer(model, cfg), make_step(cfg, epoch=0)
    metrics = task_metrics(cfg, 101).to(runtime.device)
    batch = synthetic_batch(cfg, 101)
    if runtime.device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=False)

    def run(n: int) -> None:
        for _ in train_steps(model, [batch] * n, step, optimizer, scaler, metrics, runtime, set()):
            pass

    run(2)  # warm-up: cuDNN's autotuning synchronises
    sites: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        frames = traceback.extract_stack()[:-1]
        ours = [f for f in frames if "smp_lite" in f.filename]
        where = f"{ours[-1].filename.split('smp_lite/')[-1]}:{ours[-1].lineno}" if ours else "?"
        sites[(where, f"{filename.split('site-packages/')[-1]}:{lineno}")] += 1

    if runtime.device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        run(steps)
    if runtime.device.type == "cuda":
        torch.cuda.set_sync_debug_mode(0)
    return sites


class Blend(torch.nn.Module):
    """MotionNet.loss's use of lambda in small: a branch on it and arithmetic with it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, lam: float) -> torch.Tensor:
        y = self.linear(x)
        if lam > 0:
            y = lam * y.relu() + (1 - lam) * y
        return y.square().mean()


def graphs_over_lambdas(lams=(0.0, 0.02, 0.05, 0.1, 0.3, 0.6)) -> int:
    counters.clear()
    model = torch.compile(Blend())
    for lam in lams:
        model(torch.randn(4, 8), lam).backward()
    return counters["stats"]["unique_graphs"]


def main() -> None:
    for task in ("smp", "supervised"):
        sites = sync_sites(task)
        print(f"{task}: {sum(sites.values())} synchronisations in 3 training steps")
        for (ours, call), n in sites.most_common():
            print(f"  {n:3d}  smp_lite/{ours}  (at {call})")
    print(f"torch._dynamo.config.specialize_float = {torch._dynamo.config.specialize_float}")
    print(f"graphs compiled for 6 values of lambda (one 0): {graphs_over_lambdas()}")


if __name__ == "__main__":
    main()
