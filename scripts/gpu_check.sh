#!/usr/bin/env bash
# One short GPU check (issue 11/11), meant to finish in under 8 minutes on one H100/H200:
#   bench.py --device cuda (train vs HF Olmo, 150m MFU at 2048 with bf16 + compile + flash, generation vs HF,
#   sandbox, one toy RL step), then a short 150m pretraining run and one PPO and one GRPO step of the 150m preset
#   at the paper's batch (64 prompts x 8 samples) on synthetic prompts (../shared does not travel to the device).
# Untested so far: no GPU was lent to the session that wrote it. Every stage writes under $OUT (or out/gpu-check).
set -uo pipefail
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
pip install -q -r requirements-dev.txt 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 240 python bench.py --device cuda --quick --json-out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
# 150m pretraining at 2048: tokens/s and MFU from metrics.jsonl (30 steps, 64 sequences per step)
timeout 150 python pretrain.py --preset 150m --device cuda --max-iters 30 --total-batch-size 64 --batch-size 16 \
    --warmup-iters 5 --eval-interval 0 --ckpt-interval 30 --samples 0 --no-tqdm --unit 20000 \
    --out-dir "$OUT/pt150m" 2>&1 | tail -5 | tee "$OUT/pretrain.log"
tail -1 "$OUT/pt150m/metrics.jsonl" | tee -a "$OUT/pretrain.log"
for algo in ppo grpo; do
  timeout 150 python rl.py --preset 150m --algo $algo --device cuda --ckpt "$OUT/pt150m/ckpt.pt" \
      --prompt-set synthetic --eval-set synthetic --max-steps 1 --eval-interval 0 --max-new-tokens 256 --no-tqdm \
      --out-dir "$OUT/rl-$algo" 2>&1 | tail -3 | tee "$OUT/rl-$algo.log"
  python - "$OUT/rl-$algo/metrics.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("type") == "train":
        print({k: v for k, v in r.items() if "second" in k or k.startswith("t_") or "mem" in k or k == "step"})
PY
done
python -c "import torch; print('peak GPU memory of this shell: n/a (per-script peaks are in their logs)')"
