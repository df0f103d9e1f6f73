#!/usr/bin/env bash
# Why R(2+1)D-10 learns nothing in `make reproduce`'s synth profile (docs/arch_sweep.md): eight
# pretrainings of that profile at once on one GPU, varying the learning rate, the precision and
# the backbone, each printing its held-out accuracy per epoch.
#
# For a GPU machine with 16 cores and PyTorch, no network. What it lacks travels with the
# checkout: a decord wheel in .whl/ (decord 0.6.0, 13.6 MB, where decord2's 26.6 MB wheel and
# the dataset would not fit the 64 MiB the device tool carries) and data/synth (42 MB, made
# here by `smp-lite data synth`).
#
# Run from anywhere:  bash benchmarks/arch_sweep.sh [OUT] [SECONDS] [ROUND]   (default $OUT, 420 s,
# round 1; rounds 2 and 3 were chosen from the results before them)
# It writes OUT/sweep.txt, refreshed every 15 s, so a run cut short still reports.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/arch_sweep}}
limit=${2:-420}
round=${3:-1}  # which eight runs: 1, 2 or 3
runs=/tmp/arch_sweep_runs
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1
if ! python3 -c "import decord" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/smp-lite-site .whl/*.whl
    export PYTHONPATH=/tmp/smp-lite-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/gpu.txt"

pretrain() {  # NAME OPTIONS...: the synth profile's pretraining, with OPTIONS on top
    local name=$1
    shift
    timeout "$limit" python3 -m smp_lite.cli pretrain --data data/synth --preset quick \
        --device cuda --no-compile --workers 2 --no-progress --overwrite --out "$runs/$name" \
        "$@" >"$runs/$name.log" 2>&1
}
sup="--task supervised --epochs 16"
if [ "$round" = 1 ]; then
    pretrain sup-r21d10-lr0.05 $sup --arch r21d10 --lr 0.05 &
    pretrain sup-r21d10-lr0.05-fp32 $sup --arch r21d10 --lr 0.05 --precision fp32 &
    pretrain sup-r21d10-lr0.02 $sup --arch r21d10 --lr 0.02 &
    pretrain sup-r21d10-lr0.01 $sup --arch r21d10 --lr 0.01 &
    pretrain sup-r3d10-lr0.05 $sup --arch r3d10 --lr 0.05 &
    pretrain sup-r3d10-lr0.02 $sup --arch r3d10 --lr 0.02 &
    pretrain sup-r3d18-lr0.05 $sup --arch r3d18 --lr 0.05 &
    pretrain prp-r21d10-lr0.01-e18 --task prp --epochs 18 --arch r21d10 --lr 0.01 &
elif [ "$round" = 2 ]; then
    pretrain sup-r3d18-lr0.01 $sup --arch r3d18 --lr 0.01 &
    pretrain sup-r3d18-lr0.02 $sup --arch r3d18 --lr 0.02 &
    pretrain sup-r3d10-lr0.01 $sup --arch r3d10 --lr 0.01 &
    pretrain sup-c3d-lr0.01 $sup --arch c3d --lr 0.01 &
    pretrain sup-r21d10-lr0.01-seed1 $sup --arch r21d10 --lr 0.01 --seed 1 &
    pretrain prp-r3d10-lr0.01-e18 --task prp --epochs 18 --arch r3d10 --lr 0.01 &
    pretrain prp-r3d10-lr0.003-e18 --task prp --epochs 18 --arch r3d10 --lr 0.003 &
    pretrain prp-r21d10-lr0.003-e18 --task prp --epochs 18 --arch r21d10 --lr 0.003 &
else
    prp="--task prp --epochs 18"
    pretrain prp-r21d10-lr0.03-e18 $prp --arch r21d10 --lr 0.03 &
    pretrain prp-r21d10-lr0.01-head1-e18 $prp --arch r21d10 --lr 0.01 --head-lr-scale 1 &
    pretrain prp-r21d10-lr0.01-fp32-e18 $prp --arch r21d10 --lr 0.01 --precision fp32 &
    pretrain prp-r21d10-lr0.01-wd0-e18 $prp --arch r21d10 --lr 0.01 --weight-decay 0 &
    pretrain prp-r3d10-lr0.03-e18 $prp --arch r3d10 --lr 0.03 &
    pretrain smp-r21d10-lr0.01-e18 --task smp --epochs 18 --arch r21d10 --lr 0.01 &
    pretrain smp-r3d10-lr0.01-e18 --task smp --epochs 18 --arch r3d10 --lr 0.01 &
    pretrain prp-c3d-lr0.01-e6 --task prp --epochs 6 --arch c3d --lr 0.01 &
fi

summarise() {
    python3 - "$runs" >"$out/sweep.txt" <<'PY'
import json, pathlib, sys
for run in sorted(pathlib.Path(sys.argv[1]).glob("*/metrics.jsonl")):
    rows = [json.loads(line) for line in run.read_text().splitlines() if line.strip()]
    acc = "val_acc_action" if run.parent.name.startswith("sup") else "val_acc_rate_c5"
    held = " ".join(f"{r[acc]:.2f}" for r in rows)
    train = f"{rows[-1][acc.replace('val', 'train')]:.2f}" if rows else "-"
    print(f"{run.parent.name:28s} {acc} per epoch: {held}  | last train {train}")
PY
}
while [ -n "$(jobs -r)" ]; do
    summarise
    sleep 15
done
summarise
cat "$out/sweep.txt"
tail -n 3 "$runs"/*.log
