set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
T0=$(date +%s)
el() { echo "[elapsed $(( $(date +%s) - T0 )) s] $*"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  python3 -c "import jax, flax, optax, orbax.checkpoint as o, grain, ml_collections; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } > $OUT/env.txt 2>&1
( JAX_PLATFORMS=cpu timeout 470 taskset -c 10-15 python3 -m pytest -v -n 5 -p no:randomly --ignore=tests/test_notebook.py --ignore=tests/test_tensorboard.py > $OUT/pytest_jax011.txt 2>&1 ) &
el checks; taskset -c 0-9 timeout 75 python3 docs/gpu_session/checks.py > $OUT/checks.txt 2>&1; el "checks rc=$?"
taskset -c 0-9 timeout 270 python3 -m experiments.benchmark --config=configs/bench_attention.py:gpu --config.training.arms= --workdir=$OUT/bench > $OUT/bench.log 2>&1; el "bench rc=$?"
taskset -c 0-9 timeout 150 python3 -m experiments.benchmark --config=configs/bench_attention.py:gpu --config.seq_lens='()' --config.checks='()' --workdir=/tmp/btrain > $OUT/training.log 2>&1; el "training rc=$?"
taskset -c 0-9 timeout 60 python3 docs/gpu_session/tune.py $OUT > $OUT/tune.txt 2>&1; el "tune rc=$?"
wait; el done
