#!/usr/bin/env bash
# One command on one GPU (one H100 / H200, about 8-9 minutes in all) for the open question: does the
# `mini` recipe reach the quality bar (shape and texture, docs/miniworld.md) with one to two orders of
# magnitude more training than the 2-core CPU allows?
#   1. a 300-step timing probe (batch 64, bf16, batches drawn by --workers processes), to size the run;
#   2. `miniworld pretrain` for as many whole thousands of steps as fit in BUDGET_MIN minutes (default 5);
#   3. `miniworld evaluate` of the result on the two prompt sets of docs/results/miniworld.md (n 32 seed 0, n 64 seed 1).
# Everything goes to $OUT (default benchmarks/results/gpu_mini): the model folder (mini_gpu/, with info.json and
# loss.png), the evaluate JSONs, and summary.txt. Each part has a time limit, so the whole stays under ~10 min.
# A CPU dry run of the plumbing (minutes, tiny budget): DEVICE=cpu BUDGET_MIN=0.3 BATCH=8 WORKERS=1 PROBE=20 \
#   OUT=/tmp/gm benchmarks/gpu_mini_pretrain.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu_mini}"
DEVICE="${DEVICE:-cuda}"
BUDGET_MIN="${BUDGET_MIN:-5}"
BATCH="${BATCH:-64}"
WORKERS="${WORKERS:-12}"
PROBE="${PROBE:-300}"
PREC="${PREC:-bf16}"
mkdir -p "$OUT"
if [ "$DEVICE" != "cpu" ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_mini_pretrain.sh needs a CUDA GPU (or DEVICE=cpu)')"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
start=$(date +%s)
rm -rf "$OUT/probe" "$OUT/probe.run"
timeout 180 python -m dual_adapter miniworld pretrain --out "$OUT/probe" --device "$DEVICE" --steps "$PROBE" \
    --batch "$BATCH" --workers "$WORKERS" --mixed-precision "$PREC" --threads 4 --checkpoint-every 100000 --log-every 100
steps=$(python - "$OUT/probe/info.json" "$BUDGET_MIN" "$PROBE" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
per_step = info["train_seconds"] / int(sys.argv[3])
steps = int(float(sys.argv[2]) * 60 / per_step) // 1000 * 1000
print(max(1000, min(100000, steps)) if float(sys.argv[2]) >= 1 else max(int(sys.argv[3]), int(float(sys.argv[2]) * 60 / per_step)))
EOF
)
echo "probe: $(python -c "import json;print(json.load(open('$OUT/probe/info.json'))['train_seconds'])") s for $PROBE steps; training $steps steps"
rm -rf "$OUT/mini_gpu" "$OUT/mini_gpu.run"
timeout $(python -c "print(int($BUDGET_MIN * 60 * 1.6 + 120))") python -m dual_adapter miniworld pretrain --out "$OUT/mini_gpu" \
    --device "$DEVICE" --steps "$steps" --batch "$BATCH" --workers "$WORKERS" --mixed-precision "$PREC" --threads 4 \
    --checkpoint-every 2000 --log-every 1000
for set in "32 0" "64 1"; do
  read -r n seed <<< "$set"
  timeout 120 python -m dual_adapter miniworld evaluate --model "$OUT/mini_gpu" --device "$DEVICE" --n "$n" --seed "$seed" \
      --json "$OUT/evaluate_n${n}_seed${seed}.json" | tee -a "$OUT/summary.txt" || echo "evaluate n $n seed $seed: exit $?"
done
echo "gpu_mini_pretrain: $steps steps of batch $BATCH ($PREC); $(( $(date +%s) - start )) s in all; files in $OUT" \
    | tee -a "$OUT/summary.txt"
