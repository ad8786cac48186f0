#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one command (one H100 / H200, about 6-8 minutes):
#   * training step time and peak memory (torch.cuda.max_memory_allocated) of a DualReal motion step,
#     an identity step and the rank-64 LoRA baseline, and the sampling step with / without DA-blocks,
#     on the real 5B and 2B configurations (bench_dualreal.py);
#   * the same DualReal motion step with the authors' batch 3 as 3 x 1 gradient accumulation
#     (bench_dualreal.py --motion-batch 3 --grad-accum 3);
#   * sampling step time with and without torch.compile, and that a second sample() call does not
#     recompile (bench_sampling_compile.py).
# Writes JSON to benchmarks/results/ (or $OUT). Each part has its own time limit so that the suite
# finishes within 8 minutes even when a part hangs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh needs a CUDA GPU')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
timeout 240 python benchmarks/bench_dualreal.py --device cuda --config 5b,2b --steps 3 --warmup 1 --sample-steps 3 \
    --out "$OUT/dualreal_cuda.json" || echo "bench_dualreal: exit $?"
timeout 90 python benchmarks/bench_dualreal.py --device cuda --config 5b --steps 2 --warmup 1 --sample-steps 1 \
    --motion-batch 3 --grad-accum 3 --out "$OUT/dualreal_cuda_b3_accum3.json" || echo "bench_dualreal accum: exit $?"
timeout 150 python benchmarks/bench_sampling_compile.py --config 5b,2b --steps 3 \
    --out "$OUT/sampling_compile_cuda.json" || echo "bench_sampling_compile: exit $?"
echo "gpu_suite: $(( $(date +%s) - start )) s; JSON in $OUT"
