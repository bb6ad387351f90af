#!/bin/bash
# The GPU run behind docs/benchmarks.md (GPU: kernels): each step in its own process, so a fault in
# one cannot take the others down; every step writes its JSON under $OUT as results come in.
# Needs FLA 0.6.0 as a wheel in .whl/ (see benchmarks/kernels_notes.md). Timeouts fit a 5-minute
# device budget; FLA's chunk kernels (minutes of autotuning on first call) are timed separately
# with `fla-speed` / `fla-accuracy` when the budget allows.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
K="python3 benchmarks/kernels.py --out $OUT --tag h100"
timeout 45 $K speed --ops gdn sdpa > $OUT/log_speed1.txt 2>&1
CUDA_LAUNCH_BLOCKING=1 timeout 70 $K accuracy --no-ceilings > $OUT/log_accuracy.txt 2>&1
timeout 70 $K speed --ops gdn2 kda --no-ceilings > $OUT/log_speed2.txt 2>&1
timeout 25 $K decode --no-ceilings > $OUT/log_decode.txt 2>&1
timeout 50 $K check --ops gdn2 gdn --no-ceilings > $OUT/log_check.txt 2>&1
cat $OUT/log_*.txt | grep -E "^(env|check|accuracy|speed|decode|wrote)" | cut -c1-330
grep -h -A30 "Traceback" $OUT/log_*.txt | grep -E "File \"/work|Error" | sort | uniq -c | head -12
