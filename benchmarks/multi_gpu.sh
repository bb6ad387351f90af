#!/bin/bash
# Multi-GPU scaling of the 350M GDN-2 hybrid at T = 4096 on the built-in real text (issue 7), in two
# device calls on a machine with 2 GPUs (each fits the 10-minute call limit):
#   OUT=... bash benchmarks/multi_gpu.sh single  # 1 GPU each, side by side on GPU 0 and GPU 1:
#       ref   4 rows x 4 micro-batches  (64k tokens a step: the 2-rank runs' global batch)
#       base  4 rows x 2 micro-batches  (32k tokens a step: the 2-rank runs' batch per GPU)
#       wide  8 rows x 2 micro-batches  (64k tokens, the same rows as ref in another grouping:
#             how far two exactly-equivalent single-GPU runs drift apart by rounding alone)
#   OUT=... bash benchmarks/multi_gpu.sh dist    # DDP, then FSDP2, on both GPUs: 4 rows x 2
#       micro-batches per GPU, 64k tokens a step; loss compared with ref, tokens/s with base
# Efficiency = tokens/s on N GPUs / (N x tokens/s of base). NVLink multicast stays off.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export NVSHMEM_DISABLE_NVLS=1 TRITON_CACHE_DIR=/tmp/tcache TRITON_CACHE_AUTOTUNING=1
export PYTHON=python3 STEPS=${STEPS:-100} WARMUP=10
OUT=${OUT:-benchmarks/results}
CFG=configs/350m-gdn2-hybrid.yaml
COMMON=(--logging.progress false --data.batch_size 4)
run() {  # run NAME GPUS NPROC ARGS...: one train_cli.sh run; its summary line and log under $OUT
    local name=$1 gpus=$2 nproc=$3
    shift 3
    CUDA_VISIBLE_DEVICES=$gpus NPROC=$nproc RUN_DIR=runs/mg-$name timeout ${LIMIT:-280} \
        bash benchmarks/train_cli.sh $CFG "${COMMON[@]}" "$@" > $OUT/mg_$name.txt 2>&1
    cp runs/mg-$name/log.jsonl $OUT/mg_${name}_log.jsonl
    tail -2 $OUT/mg_$name.txt
}
case "$1" in
single)
    nvidia-smi topo -m > $OUT/mg_topo.txt 2>&1; cat $OUT/mg_topo.txt
    (LIMIT=520 run ref 0 1 --optim.accum_steps 4) &
    (LIMIT=220 run base 1 1 --optim.accum_steps 2; LIMIT=330 run wide 1 1 --optim.accum_steps 2 --data.batch_size 8) &
    wait ;;
dist)
    run ddp 0,1 2 --optim.accum_steps 2 --runtime.distributed ddp
    run fsdp2 0,1 2 --optim.accum_steps 2 --runtime.distributed fsdp2 ;;
*)
    echo "usage: $0 single|dist"; exit 2 ;;
esac
# the single phase's ref log: from this call, or committed under benchmarks/results by the last one
REF=$OUT/mg_ref_log.jsonl; [ -f $REF ] || REF=benchmarks/results/mg_ref_log.jsonl
[ -f $REF ] && python3 benchmarks/compare_losses.py $REF $(ls $OUT/mg_{wide,ddp,fsdp2}_log.jsonl 2>/dev/null) \
    --out $OUT/mg_losses_$1.json
