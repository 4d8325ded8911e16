"""The XLA compiler options every ti2v-jax program is compiled with, per platform.

On CPU, jaxlib 0.10's XLA hands matrix products, reductions and convolutions to the
YNNPACK library. Its convolutions are slower than XLA's own (Eigen) ones at the U-Net's
shapes, while turning YNNPACK off altogether (`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`)
slows the attention's max and sum reductions. So ti2v-jax compiles its CPU programs with
YNNPACK for products and reductions only (measured in benchmarks/RESULTS.md).

On GPU, it turns Triton's matrix-product fusions off (cuBLAS does those products), which
made frame programs faster in interleaved A/Bs (benchmarks/RESULTS.md).

On TPU it sets none: XLA:TPU's defaults, nothing measured there yet.

`PLATFORMS` states, per platform, everything ti2v-jax chooses for it: the compiler options,
the attention kernel a model built with `attention=None` runs (`models.layers.AUTO_ATTENTION`)
and the network dtype the benchmarks use; `default_batch_size` proposes videos per call.

The options are given per program (`jax.jit(..., compiler_options=...)`), so nothing else
in the process changes. One is left out when `XLA_FLAGS` already sets it (the user's
choice wins), and all are when this jaxlib does not accept them.
"""

from __future__ import annotations

import functools
import os

import jax

_YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
_OPTIONS = {
    "cpu": {_YNN_FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
    # cuBLAS rather than Triton for the products XLA fuses with their neighbours (faster
    # frame programs in benchmarks/gpu/ab_options.py's A/Bs)
    "gpu": {"xla_gpu_enable_triton_gemm": False},
}


# What runs on each platform, in one table (the README's "Platforms" section states it).
#   attention: what attention=None runs (layers.AUTO_ATTENTION; per-call fallbacks to XLA in
#     layers.attention_kernel: cuDNN needs half precision and head dims <= 256; the Pallas
#     TPU kernel sequences in multiples of 128: the 16-frame temporal and 77-token
#     cross-attentions run XLA's)
#   dtype: the network dtype the benchmarks and the GPU script use (the CLI's --dtype)
#   options: the compiler options above
PLATFORMS = {
    "cpu": {"attention": "blocked", "dtype": "float32", "options": _OPTIONS["cpu"]},
    "gpu": {"attention": "cudnn", "dtype": "bfloat16", "options": _OPTIONS["gpu"]},
    "tpu": {"attention": "pallas", "dtype": "bfloat16", "options": {}},
}


def platform_defaults(platform: str | None = None) -> dict:
    """`PLATFORMS[platform]` (default: JAX's default backend); XLA attention, float32 and no
    options for a platform not in the table."""
    platform = platform or jax.default_backend()
    return dict(PLATFORMS.get(platform, {"attention": "xla", "dtype": "float32", "options": {}}))


# Provisional inputs of `default_batch_size`, derived, not measured at B > 1: one H200 run
# (config full, bf16, 256x256, K=16) peaked at 5.5 GiB for one video, about 3.3 GiB of it
# weights (U-Net bf16, VAE and text encoder); the rest, ~2.2 GiB, is taken to grow with the
# batch (rounded up to 2.5 for the allocator's slack).
_FIXED_GIB, _PER_VIDEO_GIB = 4.0, 2.5
_MAX_BATCH = {"cpu": 1, "gpu": 8, "tpu": 8}


def default_batch_size(platform: str | None = None, *, device_memory_gib: float | None = None) -> int:
    """Videos per call and device that `ti2v-jax batch` should use by default.

    CPU: 1, measured (benchmarks/RESULTS.md, `benchmarks/gpu/throughput.py` on config `small`):
    batches of 2 and 4 videos per call made fewer new frames per second than one at a time.
    GPU/TPU: PROVISIONAL, from reasoning only, until benchmarks/gpu/run_gpu.sh's throughput
    rows (B = 1, 2, 4, 8) are measured: a batch of 1 leaves the U-Net's deepest levels (4x4 and
    8x8 latents) with matrix products too thin to fill the chip (a third of its peak at B=1),
    so the largest power of two up to 8 whose activations (`_PER_VIDEO_GIB` each, for the
    real model at 256x256) and weights fit in 60% of the device's memory (`device_memory_gib`,
    default: the first device's `bytes_limit`, else 16 GiB, the smallest TPU's).
    """
    platform = platform or jax.default_backend()
    cap = _MAX_BATCH.get(platform, 1)
    if cap == 1:
        return 1
    if device_memory_gib is None:
        try:
            stats = jax.local_devices(backend=platform)[0].memory_stats() or {}
            device_memory_gib = stats.get("bytes_limit", 16 << 30) / 2**30
        except Exception:  # noqa: BLE001 - no such device here: the smallest memory in the table
            device_memory_gib = 16.0
    b = 1
    while 2 * b <= cap and _FIXED_GIB + 2 * b * _PER_VIDEO_GIB <= 0.6 * device_memory_gib:
        b *= 2
    return b


def compiler_options(platform: str | None = None) -> dict:
    """The options for a program on `platform` ("cpu", "gpu", "tpu"; default: JAX's default
    backend). Empty where ti2v-jax sets none. An option `XLA_FLAGS` already names is left out
    (the user's choice wins), and all of them where this jaxlib, or this machine, does not
    take them (a platform with no device here takes none)."""
    platform = platform or jax.default_backend()
    flags = os.environ.get("XLA_FLAGS", "")
    wanted = tuple((k, v) for k, v in _OPTIONS.get(platform, {}).items() if k not in flags)
    return dict(_accepted(platform, wanted)) if wanted else {}


@functools.cache
def _accepted(platform: str, options: tuple) -> tuple:
    try:  # a jaxlib that does not know an option (or its value) refuses it at compile time
        one = jax.device_put(1.0, jax.local_devices(backend=platform)[0])
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(one).compile()
    except Exception:  # noqa: BLE001 - any refusal means: compile without them
        return ()
    return options


def jit(fn, *, platform: str | None = None, **kwargs):
    """`jax.jit(fn, **kwargs)` with `compiler_options(platform)`."""
    return jax.jit(fn, compiler_options=compiler_options(platform) or None, **kwargs)
