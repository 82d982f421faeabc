#!/bin/sh
# Time this build's model on the board: batch 1, after warm-up; p50 / p90 latency and throughput,
# the figures yolobuild reports for the runtimes it can time itself. Usage: sh benchmark.sh [RUNS]
set -e
cd "$(dirname "$0")"
RUNS="${1:-100}"
if [ -f model.bmodel ] && command -v bmrt_test >/dev/null 2>&1; then
  # the vendor's own timer first: it reports the NPU time without Python around it
  bmrt_test --bmodel model.bmodel --loopnum "$RUNS"
fi
exec python3 infer.py --benchmark "$RUNS"
