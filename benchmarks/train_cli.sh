#!/usr/bin/env bash
# Training throughput of a preset through the real CLI (data loading, packing, optimizer, logging
# included): runs STEPS optimizer steps and prints tokens/s over the steps after the first WARMUP
# (kernel autotuning and allocator warm-up excluded). No checkpoint is written.
#
#   benchmarks/train_cli.sh                                   # configs/350m-gdn2-hybrid.yaml, 60 steps
#   STEPS=100 benchmarks/train_cli.sh configs/350m-gdn2-hybrid.yaml --data.batch_size 8
#   NPROC=8 benchmarks/train_cli.sh configs/350m-gdn2-hybrid.yaml --runtime.distributed fsdp2
set -euo pipefail
CONFIG=${1:-configs/350m-gdn2-hybrid.yaml}
shift || true
STEPS=${STEPS:-60}
WARMUP=${WARMUP:-10}
NPROC=${NPROC:-1}
PY=${PYTHON:-python}
RUN=${RUN_DIR:-runs/bench-train-cli}
rm -rf "$RUN"

ARGS=("$CONFIG" --checkpoint.dir "$RUN" --schedule.steps "$STEPS" --checkpoint.every 0
      --checkpoint.at_end false --eval.every 0 --logging.every 1 --logging.tensorboard false "$@")
if [ "$NPROC" -gt 1 ]; then
  "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m gatedelta.train "${ARGS[@]}"
else
  "$PY" -m gatedelta.train "${ARGS[@]}"
fi

"$PY" - "$RUN/log.jsonl" "$WARMUP" "$CONFIG" "$NPROC" "$@" <<'PYEOF'
import json, sys
log, warmup, config, nproc = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rows = [json.loads(l) for l in open(log)]
steps = [r for r in rows if "loss" in r and r["step"] > warmup]
ends = [r for r in rows if r.get("event") == "end"]
# per-step records: tok_per_s over one step each; the mean over steps is total tokens / total time
times = [1.0 / r["tok_per_s"] for r in steps]
tok_s = len(times) / sum(times)
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(json.dumps({"config": config, "extra_args": sys.argv[5:], "ranks": nproc, "device": gpu,
                  "steps_timed": len(steps), "tokens_per_s": round(tok_s),
                  "final_loss": steps[-1]["loss"] if steps else None}))
print(f"tokens/s (all ranks, steps {warmup + 1}..{steps[-1]['step']}): {tok_s:,.0f}")
PYEOF
