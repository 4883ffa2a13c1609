#!/usr/bin/env bash
# The GPU check, one script: under 8 minutes on one GPU, one `RESULT {json}` line at the end.
#
#   bash bench/gpu_check.sh                      # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash bench/gpu_check.sh   # the same plumbing on a CPU (small sizes)
#
# 1. bench/meta_train.py --parts gpu,device-protocol: one meta-iteration of 1,000 and 10,000 sine seeds
#    in one pass (µs per seed-iteration, peak GPU memory), and the sine protocol (5 seeds x 500
#    iterations, evaluation every 10) end to end on the GPU against the CPU.
# 2. bench/unroll_memory.py --steps 100: an M = 100 unroll with and without unroll_checkpoint.
# 3. bench/gpu_job.py: a `device: cuda` job through `ml3 serve` and `ml3 worker --queues gpu` on
#    PostgreSQL (ML3_GPU_CHECK_DATABASE_URL) and Redis where the machine has them, else SQLite and the
#    embedded runner; the job registers its loss and the loss answers evaluate.
# Each part has its own time limit; one that fails is reported and the others still run. Python
# packages the machine lacks can travel as wheels in .whl/ (installed into /tmp/site first).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
LOGS=${OUT:-$(mktemp -d)}
mkdir -p "$LOGS"
if [ -n "${QUICK:-}" ]; then SEEDS=100,1000; QUICKFLAG=--quick; else SEEDS=1000,10000; QUICKFLAG=; fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

part() {  # name, time limit (s), command...: its RESULT json, or an error object
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  local line
  line=$(grep '^RESULT ' "$LOGS/$name.log" | tail -1 | cut -c8-)
  echo "$name: exit $rc in $((SECONDS - start)) s (log $LOGS/$name.log)" >&2
  if [ -n "$line" ]; then echo "\"$name\": {\"exit\": $rc, \"result\": $line}"
  else echo "\"$name\": {\"exit\": $rc, \"error\": $(tail -3 "$LOGS/$name.log" | $PY -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}"
  fi
}

$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" >&2
A=$(part meta_train 270 $PY bench/meta_train.py --device "$DEVICE" --parts gpu,device-protocol --gpu-seeds "$SEEDS" $QUICKFLAG)
B=$(part unroll_memory 60 $PY bench/unroll_memory.py --steps 100 --device "$DEVICE")
C=$(part service_job 150 $PY bench/gpu_job.py --device "$DEVICE" ${ML3_GPU_CHECK_DATABASE_URL:+--database-url "$ML3_GPU_CHECK_DATABASE_URL"})
echo "RESULT {\"bench\": \"gpu_check\", \"device\": \"$DEVICE\", $A, $B, $C}"
