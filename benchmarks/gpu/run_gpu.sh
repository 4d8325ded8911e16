#!/usr/bin/env bash
# The whole benchmark (config `full`, ModelScope 1.7B shapes, random weights) on a fresh,
# offline GPU machine, then the kernel profile of one guidance pair (about 80 s more;
# NO_PROFILE=1 skips it); about 6 minutes in all on an H100. AB_OPTIONS=1 adds an A/B of
# XLA options and attention kernels on a 10-pair frame program (benchmarks/gpu/ab_options.py;
# sets: AB_SETS=a,b,...; 4 full-model compiles, about 2.5 min on an H200,
# cut at DEADLINE_S=540 s from the script's start). Run from the repository root:
#     bash benchmarks/gpu/run_gpu.sh [OUT_DIR]     (default $OUT, else benchmarks/out)
# Needs the wheels in .whl/ (git-ignored; the device tool's `carry: [".whl"]`):
# diffusers (not preinstalled there) and flax 0.12.8 (the version the tests pass with).
# torch, transformers, jax[cuda], orbax, einops, imageio, safetensors, tqdm, pillow are
# preinstalled there.
set -uo pipefail
OUT_DIR="${1:-${OUT:-benchmarks/out}}"
mkdir -p "$OUT_DIR"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/diffusers-*.whl || { echo "diffusers wheel install failed"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD:${PYTHONPATH:-}"
# The preinstalled flax if our models build with it; else the carried 0.12.8.
python3 -c "from flax import nnx; import ti2v_jax.loading, ti2v_jax.models.unet3d" 2>/dev/null || \
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/flax-*.whl
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
python3 -c "import jax, flax, torch, diffusers, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" \
  2>&1 | tee -a "$OUT_DIR/gpu.txt"
# torch first (short: its video is extrapolated from its frame time), then ti2v-jax in bf16
# with cuDNN attention; ti2v-jax's video runs as N=15 dispatches of the compiled frame
# program (queue on the device, no host sync) to save one full-model compile on the lease.
python3 benchmarks/bench.py --config full --dtype bfloat16 --attention auto --impls torch,jax \
  --repeats 5 --frame-repeats 2 --new-frames 15 --torch-new-frames 0 --video-slides pixel --video-mode loop \
  --tag gpu_full --out "$OUT_DIR" "${@:2}" 2>&1 | grep -v -E "Warning|warn\(" | tee "$OUT_DIR/log.txt"
if [ -z "${NO_PROFILE:-}" ]; then
  timeout 200 python3 benchmarks/gpu/profile_unet.py --config full --dtype bfloat16 --out "$OUT_DIR" 2>&1 \
    | grep -v -E "Warning|warn\(" | tee "$OUT_DIR/profile_log.txt"
fi
if [ -n "${AB_OPTIONS:-}" ]; then
  # gets what is left of DEADLINE_S (default 540) seconds since the script began
  left=$(( ${DEADLINE_S:-540} - SECONDS ))
  echo "ab_options: ${left} s left" | tee -a "$OUT_DIR/ab_options_log.txt"
  [ "$left" -ge 90 ] && timeout "$left" python3 benchmarks/gpu/ab_options.py --config full --dtype bfloat16 \
    --out "$OUT_DIR" ${AB_SETS:+--sets "$AB_SETS"} 2>&1 | grep -v -E "Warning|warn\(" | tee -a "$OUT_DIR/ab_options_log.txt"
fi
