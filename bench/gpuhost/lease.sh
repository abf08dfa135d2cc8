#!/bin/bash
# The whole GPU-host measurement in one command, for a lease with little time: on the host, from the folder
# A that holds pack.sh's archives and src.tar (this checkout), results into OUT (at most a few files).
#   on the host:  A=$PWD/.gpuhost; mkdir -p /tmp/src && tar -xf $A/src.tar -C /tmp/src && \
#                 cd /tmp/src && bash bench/gpuhost/lease.sh $A $OUT
# BUDGET_S (default 300): seconds after the server is up; the one-core side by side runs first, then the
# multi-process runs, the idle workers, the profile and the starved run while the budget lasts.
set -o pipefail
A=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd)
cd "$(dirname "$0")/../.."
bash bench/gpuhost/run.sh "$A" python bench/gpuhost_loadgen.py --perf-analyzer "${SRV:-/tmp/tritongen-srv}/pa/perf_analyzer" \
  --out /tmp/tritongen-gh --json "$OUT/gpuhost.json" --budget-s "${BUDGET_S:-300}" ${EXTRA_ARGS:-} 2>&1 | tee "$OUT/log.txt"
rc=$?
cp /tmp/tritongen-gh/profile-u*.txt "$OUT/" 2>/dev/null
tail -c 4000000 /tmp/tritongen-gh/work/triton.log > "$OUT/triton.log" 2>/dev/null
exit $rc
