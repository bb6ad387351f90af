#!/bin/bash
# Second GPU run (after the BV >= 32 fix): the accuracy table, T = 32k timings, a per-kernel profile
# and the remaining ops' bf16 check. Same conventions as run_h100.sh.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
K="python3 benchmarks/kernels.py --out $OUT --tag h100 --no-ceilings"
timeout 75 $K accuracy > $OUT/log_accuracy.txt 2>&1
timeout 50 $K speed --T 32768 --ops gdn sdpa gdn2 kda > $OUT/log_speed3.txt 2>&1
timeout 25 $K profile > $OUT/log_profile.txt 2>&1
[ "$CHECK" = 1 ] && timeout 45 $K check --ops kda gla delta_rule ssd linear_attn > $OUT/log_check2.txt 2>&1
cat $OUT/log_*.txt | grep -E "^(check|accuracy|speed|decode|profile|wrote)" | cut -c1-600
grep -h -A30 "Traceback" $OUT/log_*.txt | grep -E "File \"/work|Error" | sort | uniq -c | head -8
