#!/usr/bin/env bash
# `make reproduce`'s synth profile for other backbones on a fresh GPU machine (16 cores,
# PyTorch installed, no network): generates data/synth there, lists its videos' checksums (the
# generated dataset is the same bytes on every machine), runs the profile's steps for ARCHS and
# packs the tables, pictures and every step's results into OUT/reproduce.tgz (no weights).
#
# What such a machine lacks travels with the checkout, as wheels in .whl/: PyAV (writes the
# videos) and decord (reads them), fetched beforehand on a machine with a registry:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl av==18.1.0 decord2==3.4.0
#
# Run from anywhere:  [LIMIT=SECONDS] bash benchmarks/gpu_reproduce.sh [OUT [ARCHS]]
# (OUT default $OUT or /tmp/gpu_reproduce, ARCHS default r3d18; LIMIT stops the profile in time
# to pack what it has). Run again to go on with a stopped profile: finished steps are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_reproduce}}
archs=${2:-r3d18}
mkdir -p "$out"
source benchmarks/gpu_env.sh "av, decord" "$out"
start=$(date +%s)
python3 -c "from smp_lite.cli import app; app()" data synth --out data/synth --workers "$(nproc)" 2>/dev/null
echo "data/synth generated in $(($(date +%s) - start)) s"
(cd data/synth && find videos -name '*.mp4' | sort | xargs md5sum) >"$out/md5.txt"

start=$(date +%s)
results=results/synth-$(echo "$archs" | tr , -)
timeout "${LIMIT:-0}" python3 -c "from smp_lite.cli import app; app()" reproduce \
    --archs "$archs" --results "$results" --no-progress 2>&1 | tee "$out/log.txt" ||
    echo "stopped after LIMIT=$LIMIT s: run again to go on" | tee -a "$out/log.txt"
echo "reproduce --archs $archs: $(($(date +%s) - start)) s" | tee -a "$out/log.txt"
tar czf "$out/reproduce.tgz" "$results" runs/reproduce-synth/steps.json \
    $(find runs/reproduce-synth -name results.json -o -name config.json -o -name metrics.jsonl)
