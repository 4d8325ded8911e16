"""The XLA compiler options every ti2v-jax program is compiled with, per platform.

On CPU, jaxlib 0.10's XLA hands matrix products, reductions and convolutions to the
YNNPACK library. Its convolutions are slow at the U-Net's shapes: a 3x3 convolution at 32-64
channels runs at 70-110 GFLOP/s on a 2-core EPYC, where XLA's own (Eigen) convolution
runs at 135-185 GFLOP/s, as fast as PyTorch's oneDNN. Turning YNNPACK off altogether
(`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`) speeds the convolutions but slows
the attention by a third (its max and sum reductions). So ti2v-jax compiles its CPU
programs with YNNPACK for products and reductions only: a guidance pair of the benchmark's
small U-Net takes 1.22 s instead of 1.37 s (benchmarks/RESULTS.md).

The options are given per program (`jax.jit(..., compiler_options=...)`), so nothing else
in the process changes. They are left out when `XLA_FLAGS` already sets the YNNPACK
fusion types (the user's choice wins) and when this jaxlib does not accept them.
"""

from __future__ import annotations

import functools
import os

import jax

_YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
_CPU = {_YNN_FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(platform: str | None = None) -> dict:
    """The options for a program on `platform` ("cpu", "gpu", "tpu"; default: JAX's default
    backend). Empty where ti2v-jax sets none."""
    platform = platform or jax.default_backend()
    if platform != "cpu" or _YNN_FLAG in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(_cpu_options())


@functools.cache
def _cpu_options() -> tuple:
    try:  # a jaxlib that does not know the option (or its values) refuses it at compile time
        one = jax.device_put(1.0, jax.local_devices(backend="cpu")[0])
        jax.jit(lambda x: x + 1, compiler_options=_CPU).lower(one).compile()
    except Exception:  # noqa: BLE001 - any refusal means: compile without it
        return ()
    return tuple(_CPU.items())


def jit(fn, *, platform: str | None = None, **kwargs):
    """`jax.jit(fn, **kwargs)` with `compiler_options(platform)`."""
    return jax.jit(fn, compiler_options=compiler_options(platform) or None, **kwargs)
