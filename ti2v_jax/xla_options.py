"""The XLA compiler options every ti2v-jax program is compiled with, per platform.

On CPU, jaxlib 0.10's XLA hands matrix products, reductions and convolutions to the
YNNPACK library. Its convolutions are slow at the U-Net's shapes: a 3x3 convolution at 32-64
channels runs at 70-110 GFLOP/s on a 2-core EPYC, where XLA's own (Eigen) convolution
runs at 135-185 GFLOP/s, as fast as PyTorch's oneDNN. Turning YNNPACK off altogether
(`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`) speeds the convolutions but slows
the attention by a third (its max and sum reductions). So ti2v-jax compiles its CPU
programs with YNNPACK for products and reductions only: a guidance pair of the benchmark's
small U-Net takes 1.22 s instead of 1.37 s (benchmarks/RESULTS.md).

On GPU, it turns Triton's matrix-product fusions off (cuBLAS does those products): a frame
program ran 2.5% faster so on an H200.

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
    # cuBLAS rather than Triton for the products XLA fuses with their neighbours: a frame
    # program 2.5% faster on an H200 (benchmarks/gpu/ab_options.py, 3 interleaved rounds)
    "gpu": {"xla_gpu_enable_triton_gemm": False},
}


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
