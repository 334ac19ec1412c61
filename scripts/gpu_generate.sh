#!/usr/bin/env bash
# Issue 19's GPU numbers in one run of at most 9 minutes on one H100/H200 (the stage timeouts add up to 500 s):
#   1. gen: bench.py's generation rows, one process for all of them: 150m in bf16, 256 new tokens, no EOS, batch
#      512 (64 x 8), 64 (8 x 8) and 1; ours on the static path (CUDA graphs) and the dynamic one, transformers'
#      generate with its static cache + torch.compile: ms/step, new tokens/s, capture / first-call time, peak
#      memory, host syncs per 100 steps, mismatched rows
#   2. pretrain: 20 steps of the 150m preset with --dtype bf16-weights (bf16 activations, fp32 master weights),
#      eager: checks the option on CUDA and leaves the checkpoint the PPO stage starts from
#   3. ppo: one rl.py PPO step of the 150m preset at 64 prompts x 8 samples, <= 512 new tokens, split in phases
# Every stage has its own timeout and log; a one-line summary of each, then $OUT/summary.json with every figure and
# the issue's targets (>= 100k tokens/s at b512, >= 5x transformers at b64, <= 1 ms a step at b1, PPO <= 12 s).
# Without a GPU it is a dry run: the same stages on tiny CPU shapes, to check the plumbing (about a minute).
# Wheels for a machine with no network: see scripts/gpu_env.sh.
set -uo pipefail
OUT=${OUT:-out/gpu-generate}
source "$(dirname "$0")/gpu_env.sh"

stage() {  # stage NAME SECONDS CMD...: log to $OUT/NAME.log, exit status to $OUT/NAME.rc
  local name=$1 secs=$2; shift 2
  echo "==== $name (timeout $secs s)"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$rc $((SECONDS - t0))" > "$OUT/$name.rc"
  tail -n 8 "$OUT/$name.log"
  echo "==== $name: exit $rc in $((SECONDS - t0)) s"
}

if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DRY=0
  stage gen 270 $PY bench.py --device cuda --preset 150m --quick --sections gen --json-out "$OUT/gen.json"
  stage pretrain 110 $PY pretrain.py --preset 150m --device cuda --dtype bf16-weights --compile 0 --max-iters 20 \
      --total-batch-size 64 --batch-size 16 --warmup-iters 5 --eval-interval 0 --ckpt-interval 20 --samples 0 \
      --no-tqdm --log-interval 5 --out-dir "$OUT/pt150m" --data-dir /tmp/data_cache
  stage ppo 120 $PY rl.py --preset 150m --algo ppo --device cuda --ckpt "$OUT/pt150m/ckpt.pt" \
      --prompt-set synthetic --prompts 64 --max-steps 1 --eval-interval 0 --max-new-tokens 512 --no-tqdm \
      --out-dir "$OUT/ppo150m"
else
  DRY=1
  echo "no CUDA device: dry run on tiny CPU shapes"
  stage gen 120 $PY -c "
import json, sys, types, bench
from model import GPTConfig
cfg = GPTConfig(vocab_size=512, n_layer=2, n_head=4, n_embd=64, block_size=256)
res = bench.bench_generate_static(types.SimpleNamespace(smoke=True), cfg, 'cpu', batches=((64, 8), (8, 8), (1, 1)))
json.dump(res, open(sys.argv[1], 'w'))" "$OUT/gen.json"
  stage pretrain 120 $PY pretrain.py --mix syn-tinygsm:1,syn-omi2:1,syn-finemath:0.5 --unit 300 --n-layer 1 \
      --n-embd 32 --n-head 2 --block-size 64 --batch-size 4 --total-batch-size 8 --warmup-iters 2 --max-iters 6 \
      --dtype bf16-weights --eval-interval 0 --ckpt-interval 6 --samples 0 --no-tqdm --threads 1 --log-interval 2 \
      --out-dir "$OUT/pt150m" --data-dir "$OUT/data_cache"
  stage ppo 120 $PY rl.py --algo ppo --device cpu --ckpt "$OUT/pt150m/ckpt.pt" --prompts 8 --prompts-per-step 2 \
      --samples-per-prompt 2 --max-new-tokens 8 --max-steps 1 --eval-interval 0 --no-tqdm --threads 1 \
      --out-dir "$OUT/ppo150m"
fi

$PY - "$OUT" "$DRY" <<'PY'
import glob, json, os, re, sys
out, dry = sys.argv[1], sys.argv[2] == "1"
summary = {"dry_run": dry, "stages": {}}
for path in sorted(glob.glob(os.path.join(out, "*.rc"))):
    rc, secs = open(path).read().split()
    summary["stages"][os.path.basename(path)[:-3]] = {"exit": int(rc), "seconds": int(secs)}

# gen: the JSON, or (a run cut short) the rows bench.py printed as it measured them
gen = {}
try:
    gen = json.load(open(os.path.join(out, "gen.json")))
except (OSError, ValueError):
    try:
        for m in re.finditer(r"^\[gen\] (gen_\w+): (.*)$", open(os.path.join(out, "gen.log")).read(), re.M):
            for kv in m.group(2).split(", "):
                k, _, v = kv.partition(" ")
                gen[f"{m.group(1)}_{k}"] = None if v == "None" else float(v)
    except OSError:
        pass
summary["gen"] = gen
for B in (512, 64, 8, 1):
    parts = []
    for impl in ("static", "hf_static", "dynamic"):
        k = f"gen_{impl}_b{B}"
        if f"{k}_tokens_per_s" in gen:
            parts.append(f"{impl} {gen[k + '_tokens_per_s']:,.0f} tok/s {gen[k + '_ms_per_step']} ms/step "
                         f"{gen.get(k + '_syncs_per_100_steps')} syncs/100 peak {gen.get(k + '_peak_mb')} MB")
        elif f"{k}_error" in gen:
            parts.append(f"{impl} FAILED ({gen[k + '_error'][:80]})")
    if parts:
        extra = (f" | capture {gen.get(f'gen_static_b{B}_capture_s')} s, mismatched rows static/dynamic "
                 f"{gen.get(f'gen_mismatches_static_dynamic_b{B}')}, "
                 f"static/hf {gen.get(f'gen_mismatches_static_hf_static_b{B}')}")
        print(f"gen b{B}: " + "; ".join(parts) + extra)

# pretrain: the last train record
pt = {}
try:
    pt = [json.loads(l) for l in open(os.path.join(out, "pt150m", "metrics.jsonl")) if '"train"' in l][-1]
except (OSError, ValueError, IndexError):
    pass
summary["pretrain"] = pt
print(f"pretrain bf16-weights: step {pt.get('step')}, loss {pt.get('loss')}, {pt.get('tok_per_s')} tok/s, "
      f"mfu {pt.get('mfu')}" if pt else "pretrain: no train record (see pretrain.log)")

# ppo: rl.py's per-step record, its phases
ppo = {}
try:
    ppo = [r for r in map(json.loads, open(os.path.join(out, "ppo150m", "metrics.jsonl")))
           if r.get("type") == "train"][-1]
except (OSError, ValueError, IndexError):
    pass
summary["ppo"] = {k: ppo.get(k) for k in ("time", "samples", "response_length", "peak_mem_mb")} if ppo else {}
print(f"ppo step: {ppo.get('time')}, {ppo.get('samples')} samples, mean response {ppo.get('response_length')}"
      if ppo else "ppo: no train record (see ppo.log)")

# the issue's targets (GPU only)
def get(k):
    return gen.get(k)
t = (ppo.get("time") or {}).get("total") if ppo else None
targets = {
    "b512_static_tokens_per_s>=100k": (get("gen_static_b512_tokens_per_s") or 0) >= 1e5,
    "b64_static_vs_hf>=5x": (get("gen_static_b64_tokens_per_s") or 0)
                            >= 5 * (get("gen_hf_static_b64_tokens_per_s") or 1e12),
    "b1_static_ms_per_step<=1": (get("gen_static_b1_ms_per_step") or 1e9) <= 1.0,
    "ppo_step_s<=12": t is not None and t <= 12,
}
summary["targets"] = None if dry else targets
judged = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in targets.items())
print("targets: " + ("(dry run: not judged)" if dry else judged))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(f"summary: {os.path.join(out, 'summary.json')}")
PY
find "$OUT" -name "*.pt" -delete  # 150m checkpoints (pretrain, PPO): gigabytes, too large to send back
