#!/usr/bin/env bash
# One short GPU check, meant to finish in about 7 minutes on one H100/H200 (README "Performance" has its numbers):
#   1. bench.py --device cuda --preset 150m: 150m MFU at the paper's shape (bf16 + compile + flash), training
#      tokens/s against HF Olmo, generation against HF generate at batch 1/8/64
#   2. the 1b preset's MFU (the same recipe), for the README's GPU-hour estimates
#   3. pretrain.py on CUDA: 20 steps of the 150m preset on the synthetic mixture (compile, bf16)
#   4. rl.py on CUDA: one PPO step of the 150m preset at the paper's batch (64 prompts x 8 samples, 512 new tokens)
# Every stage has its own timeout and log, so one failure does not hide the rest. Logs and JSON go to $OUT.
# The device machine has no network: see scripts/gpu_env.sh for the wheels to put in .whl first.
set -uo pipefail
OUT=${OUT:-out/gpu-check}
source "$(dirname "$0")/gpu_env.sh"

stage() {  # stage NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  echo "==== $name"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "==== $name: exit $rc in $((SECONDS - t0)) s"
}

stage bench150m 240 $PY bench.py --device cuda --preset 150m --quick --sections mfu,train,gen --json-out "$OUT/bench150m.json"
stage mfu1b 150 $PY bench.py --device cuda --quick --sections mfu --mfu-preset 1b --json-out "$OUT/mfu1b.json"
stage pretrain150m 150 $PY pretrain.py --preset 150m --device cuda --compile 1 --max-iters 20 --total-batch-size 64 \
    --batch-size 16 --warmup-iters 5 --eval-interval 0 --ckpt-interval 20 --samples 0 --no-tqdm --log-interval 5 \
    --out-dir "$OUT/pt150m" --data-dir /tmp/data_cache
grep '"train"' "$OUT/pt150m/metrics.jsonl" 2>/dev/null | tail -2
stage ppo150m 150 $PY rl.py --preset 150m --algo ppo --device cuda --ckpt "$OUT/pt150m/ckpt.pt" \
    --prompt-set synthetic --prompts 64 --max-steps 1 --eval-interval 0 --max-new-tokens 512 --no-tqdm \
    --out-dir /tmp/rl-ppo
$PY - /tmp/rl-ppo/metrics.jsonl <<'PY'
import json, sys
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)
        if r.get("type") == "train":
            print("ppo step:", {k: r.get(k) for k in ("time", "samples", "response_length", "peak_mem_mb")})
except OSError as e:
    print("no rl metrics:", e)
PY
rm -rf "$OUT/pt150m/ckpt.pt"  # 1.7 GB: too large to send back
