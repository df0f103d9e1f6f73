#!/usr/bin/env bash
# Every speed figure of a GPU machine in one go (docs/benchmarks.md, "On a GPU"), the most
# wanted first: `smp-lite bench` (the matmul peak, compute alone per backbone and task, compiled
# as training runs it, with FLOPs and share of the peak, the compute of the original code's
# style, the loader alone per playback rate and worker count and with the rates mixed, with 1
# and with 4 clips a decoded video, the original code's loading style on the same files, and
# `train()` end to end, steady, over a 100-batch epoch, with pretraining's default workers);
# then the compiled step's kernels, the training loop's synchronisations, and a loader
# process's breakdown.
#
# For a fresh GPU machine (H100/H200 class, 16 cores, PyTorch installed, no network), in about
# 7 minutes (8.2 on an H100 with a second step profile, without the conv forms, which it no
# longer runs; each more arch, as `--archs r3d18,c3d`, adds about a minute). It installs
# nothing from the network. What such a machine lacks travels with the checkout: the decord2
# wheel in .whl/, and the generated dataset in data/synth/ (29 MB, made here by `smp-lite data
# synth`, the same files on every machine), since PyAV's wheel, which writes it, is 40 MB. Fetch the wheel beforehand on a machine with a registry:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl decord2==3.4.0
#
# Run from anywhere:  bash benchmarks/gpu_check.sh [OUT [BENCH OPTIONS...]]   (OUT: where the
# results go, default $OUT or /tmp/gpu_check; options after it override the bench's below).
# It prints everything and writes OUT/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
shift || true
mkdir -p "$out"
source benchmarks/gpu_env.sh "decord" "$out"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# the generated dataset, 600 videos: carried, or made here where PyAV is installed
python3 -m smp_lite.cli data synth --out data/synth --workers 16

python3 -m smp_lite.cli bench --device cuda --preset paper --archs r3d18 \
    --tasks smp,supervised --batch-size 32 --workers 15 --clips-per-video 1,4 --rates 1,2,4,8 \
    --loader-batches 15 --step-batches 100 \
    --write "$out/benchmarks.md" "$@" | tee "$out/bench.txt"

# the compiled step's kernels by kind, with the GPU forms of the convs cuDNN runs slowly
# (runtime.reform_cuda_convs; --no-forms for the step without them)
python3 benchmarks/step_profile.py --no-layers 2>&1 | grep -v -i warn | tee "$out/step_profile.txt"

# the training loop's waits for the GPU, and torch.compile's graphs over SMP's lambda
python3 benchmarks/sync_probe.py 2>&1 | grep -v Warning | tee "$out/sync_probe.txt"

# one loader process at the paper size: where a sample's time goes on this machine's CPU
python3 benchmarks/loader_breakdown.py --data data/synth --videos 32 --rates 1,8 \
    --size 128x171 --crop 112 | tee "$out/loader_breakdown.txt"
