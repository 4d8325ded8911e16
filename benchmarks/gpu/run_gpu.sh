#!/usr/bin/env bash
# Issue 22's whole GPU benchmark in ONE call, everything under OUT_DIR; every part stops by
# DEADLINE_S (default 440 s) after the start, parts that would not finish are skipped and said so.
#   1. the published PyTorch loop (fp16 autocast, two batch-1 U-Net calls per pair, K-1
#      encodes per pixel-slide frame): weights made once (random, perturbed, save_pretrained),
#      a pair and one frame per slide (bench.py --impls torch)
#   2. ti2v-jax, config full, bf16, the frame program at B = 1, 2, 4, 8 videos per call,
#      then the kernel profile of the B=1 program, then A/B variants at B=1 in turns with
#      the default (AB, default one_pass_group_norm: the opt-in one-pass GroupNorm; AB= for
#      none; names in gpu/ab_options.py SETS) (gpu/throughput.py); its deadline leaves
#      TUNED_BUDGET_S (default 140) for:
#   3. the tuned PyTorch peer (bf16, SDPA, batch-2 guidance, torch.compile of the U-Net in
#      TORCH_COMPILE_MODE, default max-autotune-no-cudagraphs; its eager figures are taken
#      first and kept if compiling does not finish in time)
#   4. summary.md: one table with the ratios
# Expected on one H200 (from the 2026-11-27 runs): setup ~30 s, part 1 ~70 s, part 2
# ~170-200 s (a full frame program compiles in ~20 s, a B=1 frame runs 1.5 s), part 3 up to
# what is left; about 7 min in all.
#     bash benchmarks/gpu/run_gpu.sh [OUT_DIR]      (default $OUT, else benchmarks/out/gpu)
# DRY_RUN=1: the same path on a CPU with config tiny and tiny settings (checks the script, not
# speed). The device tool brings back 8 files at most, so OUT_DIR gets three: log.txt,
# summary.md and gpu_results.tar.gz (every raw output, kept in RAW_DIR, default
# /tmp/ti2v_gpu_raw), re-packed after each part. Device call: carry [".whl"], timeout_s 560.
# Needs the wheels in .whl/ on the device (git-ignored; carry [".whl"]): diffusers (not
# preinstalled there) and flax 0.12.8 (used only if the preinstalled flax cannot build our
# models). torch, transformers, jax[cuda] and the rest are preinstalled there.
set -uo pipefail
OUT_DIR="${1:-${OUT:-benchmarks/out/gpu}}"
# raw outputs outside OUT_DIR (the device tool returns 8 files at most): packed into OUT_DIR
RAW="${RAW_DIR:-/tmp/ti2v_gpu_raw}"
rm -rf "$RAW"; mkdir -p "$RAW" "$OUT_DIR"
T0=$(date +%s)
DEADLINE_S=${DEADLINE_S:-440}
TUNED_BUDGET_S=${TUNED_BUDGET_S:-140}
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }
pack() { tar czf "$OUT_DIR/gpu_results.tar.gz" -C "$RAW" . 2>/dev/null; }
trap pack EXIT
exec > >(tee -a "$OUT_DIR/log.txt") 2>&1
if [ -n "${DRY_RUN:-}" ]; then
  CONFIG=tiny; STEPS=1; RESAMPLE=1; BATCHES=1,2; PUB="--repeats 2 --frame-repeats 1"; TUNED="--repeats 2 --frame-repeats 1"
  MODE=${TORCH_COMPILE_MODE:-default}
else
  CONFIG=full; STEPS=10; RESAMPLE=4; BATCHES=${BATCHES:-1,2,4,8}; PUB="--repeats 3 --frame-repeats 1"
  TUNED="--repeats 5 --frame-repeats 2"; MODE=${TORCH_COMPILE_MODE:-max-autotune-no-cudagraphs}
fi
SETTINGS="--config $CONFIG --steps $STEPS --resample $RESAMPLE"
WEIGHTS=/tmp/ti2v_bench_weights_$CONFIG
echo "run_gpu.sh: config $CONFIG, S=$STEPS, R=$RESAMPLE, B=$BATCHES, torch.compile mode $MODE, deadline ${DEADLINE_S} s"

# --- setup
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/diffusers-*.whl || { echo "diffusers wheel install failed"; exit 1; }
fi
export PYTHONPATH="/tmp/site:$PWD:${PYTHONPATH:-}"
# The preinstalled flax if our models build with it; else the carried 0.12.8.
python3 -c "from flax import nnx; import ti2v_jax.loading, ti2v_jax.models.unet3d" 2>/dev/null || \
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/flax-*.whl
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import jax, flax, torch, diffusers, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$RAW/machine.txt"
quiet() { grep --line-buffered -v -E "Warning|warn\(|Loading weights|should be kept in float32"; }
echo "setup done at $(( $(date +%s) - T0 )) s"

# --- 1. the published loop (makes the weights)
python3 benchmarks/bench.py $SETTINGS --dtype bfloat16 --impls torch $PUB --new-frames 0 --torch-new-frames 0 \
  --video-slides "" --weights "$WEIGHTS" --out "$RAW" --tag published \
  --deadline-s $(( $(left) - TUNED_BUDGET_S - 120 )) 2>&1 | quiet
pack; echo "part 1 done at $(( $(date +%s) - T0 )) s"

# --- 2. ti2v-jax at B = 1, 2, 4, 8 (+ profile, + A/B)
python3 benchmarks/gpu/throughput.py $SETTINGS --dtype bfloat16 --batches "$BATCHES" --runs 1 --profile \
  --ab "${AB-one_pass_group_norm}" --deadline-at $(( T0 + DEADLINE_S - TUNED_BUDGET_S )) --out "$RAW" 2>&1 | quiet
pack; echo "part 2 done at $(( $(date +%s) - T0 )) s"

# --- 3. the tuned peer (what is left)
python3 benchmarks/bench.py $SETTINGS --dtype bfloat16 --impls torch_tuned $TUNED --tuned-eager-frame \
  --torch-compile-mode "$MODE" --new-frames 0 --torch-new-frames 0 --video-slides "" --weights "$WEIGHTS" \
  --out "$RAW" --tag tuned --deadline-s "$(left)" 2>&1 | quiet
pack; echo "part 3 done at $(( $(date +%s) - T0 )) s"

# --- 4. one table
python3 benchmarks/gpu/summary.py "$RAW" | tee "$OUT_DIR/summary.md"
echo "run_gpu.sh wall $(( $(date +%s) - T0 )) s"
