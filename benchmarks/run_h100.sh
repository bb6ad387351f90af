#!/bin/bash
# The GPU run behind docs/benchmarks.md (GPU: kernels): each step in its own process, so a fault in
# one cannot take the others down; every step writes its JSON under $OUT as results come in.
# Needs FLA 0.6.0 as a wheel in .whl/ (see benchmarks/kernels_notes.md).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
K="python3 benchmarks/kernels.py --out ${OUT:-benchmarks/results} --tag h100"
CUDA_LAUNCH_BLOCKING=1 timeout 90 $K accuracy > $OUT/log_accuracy.txt 2>&1
timeout 70 $K speed --ops gdn sdpa --no-ceilings > $OUT/log_speed1.txt 2>&1
timeout 110 $K speed --ops gdn2 kda --no-ceilings > $OUT/log_speed2.txt 2>&1
timeout 40 $K decode --no-ceilings > $OUT/log_decode.txt 2>&1
timeout 100 $K check --no-ceilings > $OUT/log_check.txt 2>&1
timeout 60 $K fla-accuracy --no-ceilings > $OUT/log_fla.txt 2>&1
cat $OUT/log_*.txt | grep -E "^(env|check|accuracy|speed|decode|wrote)" | cut -c1-400
grep -h -B2 -A12 "Traceback" $OUT/log_*.txt | grep -E "File \"/work|Error" | head -20
