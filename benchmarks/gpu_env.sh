# Sourced by the GPU scripts, from the checkout's root, as
#   source benchmarks/gpu_env.sh "MODULES" OUT
# On a machine without a registry: when `import MODULES` fails, installs the wheels that
# travel in .whl/ into /tmp/smp-lite-site and puts them on PYTHONPATH. Then puts this checkout
# on PYTHONPATH (smp_lite itself) and records the GPU in OUT/gpu.txt.
if ! python3 -c "import $1" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/smp-lite-site .whl/*.whl
    export PYTHONPATH=/tmp/smp-lite-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$2/gpu.txt"
