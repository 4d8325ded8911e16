"""What ti2v-jax chooses for each platform, in one table, and the chips it plans for.

A program is compiled for the devices it will run on, never for whatever the host is:
every choice below is taken from the *target's* platform (`platform_of(devices)`), which
may be a TPU topology described on a CPU-only host (`jax.experimental.topologies`).

`PLATFORMS[platform]`:
  attention  the kernel a model built with `attention=None` gets (resolved when the model is
             built for its devices, so it is part of the graph and of every program's key);
             per-call fallbacks to XLA live in `models.attention.attention_kernel` (cuDNN needs
             half precision and head dims <= 256; the Pallas TPU kernel sequences in multiples
             of 128: the 16-frame temporal and 77-token cross-attentions run XLA's)
  dtype      the U-Net dtype the benchmarks and `ti2v-jax plan` use by default
  options    the XLA compiler options every program for that platform is compiled with

On CPU, jaxlib 0.10's XLA hands matrix products, reductions and convolutions to the YNNPACK
library; its convolutions are slower than XLA's own at the U-Net's shapes, while turning
YNNPACK off altogether slows the attention's reductions, so CPU programs use YNNPACK for
products and reductions only. On GPU, Triton's matrix-product fusions are off (cuBLAS does
those products). On TPU: XLA's defaults. (Measurements: benchmarks/RESULTS.md.)

The options are given per program (`jax.jit(..., compiler_options=...)`), so nothing else in
the process changes. One is left out when `XLA_FLAGS` already sets it (the user's choice
wins), and all are when a local device of that platform refuses them.

`CHIPS`: datasheet figures of the accelerators `ti2v-jax plan` reports for (memory per chip,
dense bf16 peak, memory bandwidth); `TOPOLOGY_KINDS` the TPU topology prefixes they go by.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax

from ti2v_jax.errors import SettingsError

_YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"

PLATFORMS = {
    "cpu": {"attention": "blocked", "dtype": "float32",
            "options": {_YNN_FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}},
    "gpu": {"attention": "cudnn", "dtype": "bfloat16", "options": {"xla_gpu_enable_triton_gemm": False}},
    "tpu": {"attention": "pallas", "dtype": "bfloat16", "options": {}},
}
_OTHER = {"attention": "xla", "dtype": "float32", "options": {}}

# Kernels that only lower for one platform (the others run anywhere).
_KERNEL_PLATFORM = {"cudnn": "gpu", "pallas": "tpu"}


def platform_defaults(platform: str | None = None) -> dict:
    """`PLATFORMS[platform]` (default: JAX's default backend); XLA attention, float32 and no
    options for a platform not in the table."""
    return dict(PLATFORMS.get(platform or jax.default_backend(), _OTHER))


def platform_of(devices: Sequence | None = None) -> str:
    """The platform ("cpu", "gpu", "tpu") programs for `devices` compile for: their platform
    (a topology description's devices included), else JAX's default backend. "cuda"/"rocm"
    are "gpu"."""
    if not devices:
        return jax.default_backend()
    platforms = {d.platform for d in devices}
    if len(platforms) != 1:
        raise SettingsError(f"devices of several platforms given ({', '.join(sorted(platforms))}); give one kind")
    p = platforms.pop()
    return "gpu" if p in ("cuda", "rocm") else p


def attention_for(attention, platform: str | None = None) -> str:
    """The attention kernel a model built for `platform` runs: `attention` itself if given
    (refused in one line where it cannot lower, e.g. "pallas" for a CPU), else the table's."""
    from ti2v_jax.models.attention import check_attention

    check_attention(attention)
    platform = platform or jax.default_backend()
    if attention is None:
        return platform_defaults(platform)["attention"]
    need = _KERNEL_PLATFORM.get(attention)
    if need is not None and need != platform:
        hint = ", or 'pallas_interpret' to run the TPU kernel on CPU" if attention == "pallas" else ""
        raise SettingsError(f"attention={attention!r} needs a {need.upper()} but programs compile for "
                            f"{platform!r}; use attention=None (chosen per platform) or 'xla'{hint}")
    return attention


# ------------------------------------------------------------------ compiler options

def compiler_options(platform: str | None = None) -> dict:
    """The options for a program on `platform` (default: JAX's default backend). Empty where
    ti2v-jax sets none. An option `XLA_FLAGS` already names is left out (the user's choice
    wins), and all of them where a local device of this platform refuses them. A platform with
    no local device (a topology compiled for ahead of time) gets the table's options as they are."""
    platform = platform or jax.default_backend()
    flags = os.environ.get("XLA_FLAGS", "")
    wanted = tuple((k, v) for k, v in platform_defaults(platform)["options"].items() if k not in flags)
    return dict(_accepted(platform, wanted)) if wanted else {}


@functools.cache
def _accepted(platform: str, options: tuple) -> tuple:
    try:
        local = jax.local_devices(backend=platform)
    except RuntimeError:  # no such backend in this process: compiled ahead for a target
        return options
    try:  # a jaxlib that does not know an option (or its value) refuses it at compile time
        one = jax.device_put(1.0, local[0])
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(one).compile()
    except Exception:  # noqa: BLE001 - any refusal means: compile without them
        return ()
    return options


def jit(fn, *, platform: str | None = None, **kwargs):
    """`jax.jit(fn, **kwargs)` with `compiler_options(platform)`."""
    return jax.jit(fn, compiler_options=compiler_options(platform) or None, **kwargs)


# ------------------------------------------------------------------ batch size

# Inputs of `default_batch_size` where no plan was made for the devices at hand: what `ti2v-jax
# plan` compiled for the real model (ms-1.7b, bf16 U-Net, fp32 VAE and text encoder, 256x256, K=16,
# S=10, R=4; benchmarks/RESULTS.md, "Compiled ahead, no chip"): GiB a chip holds for the first video
# and for each further one. TPU, v5e:2x4: 5.20 at 1 per chip, 14.33 at 16. GPU, H100: 6.50 at 1,
# 26.93 at 64.
_PLANNED_GIB = {"tpu": (5.20, (14.33 - 5.20) / 15), "gpu": (6.50, (26.93 - 6.50) / 63)}
_MAX_BATCH = {"cpu": 1, "gpu": 8, "tpu": 8}
_MEMORY_SHARE = 0.9  # of the device's memory: the allocator's slack and the runtime's own


def default_batch_size(platform: str | None = None, *, device_memory_gib: float | None = None) -> int:
    """Videos per call and device that `ti2v-jax batch` uses when neither `--batch-size` nor
    saved programs (`ti2v-jax plan --save-executables`, compiled for a batch the plan found to
    fit) say.

    CPU: 1, measured (benchmarks/RESULTS.md): batches of 2 and 4 made fewer new frames per
    second than one at a time. GPU/TPU: the largest power of two up to 8 whose memory, as the
    plans compiled for the real model at 256x256 give it (`_PLANNED_GIB`: first video, each
    further one), fits in 90% of the device's memory (default: the first device's
    `bytes_limit`, else 16 GiB, the smallest TPU's). Up to 8: larger batches fit on most chips,
    but their speed is not measured.
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
    first, more = _PLANNED_GIB[platform]
    b = 1
    while 2 * b <= cap and first + (2 * b - 1) * more <= _MEMORY_SHARE * device_memory_gib:
        b *= 2
    return b


# ------------------------------------------------------------------ chips

@dataclasses.dataclass(frozen=True)
class Chip:
    """Datasheet figures of one accelerator chip (per chip, dense)."""
    name: str
    platform: str
    hbm_gib: float          # memory per chip
    bf16_tflops: float      # dense bf16 peak
    hbm_gbps: float         # memory bandwidth, GB/s
    # libtpu's chip configuration to compile for: "megacore" makes one JAX device of a chip's two
    # TensorCores (how v4 and v5p run by default); a "default" v4 topology has one device per core.
    chip_config: str = "default"


CHIPS = {
    "v4": Chip("TPU v4", "tpu", 32, 275, 1228, "megacore"),
    "v5e": Chip("TPU v5e", "tpu", 16, 197, 819),
    "v5p": Chip("TPU v5p", "tpu", 95, 459, 2765, "megacore"),
    "v6e": Chip("TPU v6e (Trillium)", "tpu", 32, 918, 1640),
    "h100": Chip("NVIDIA H100 SXM", "gpu", 80, 989, 3350),
    "h200": Chip("NVIDIA H200 SXM", "gpu", 141, 989, 4800),
}

# What XLA's GPU compiler needs to know of a GPU it cannot see (its GpuTargetConfigProto): the
# datasheet figures of the SXM parts (both Hopper, compute capability 9.0, 132 SMs at 1.98 GHz,
# 228 KiB of shared memory per SM, 50 MiB of L2), with their memory size and bandwidth.
_HOPPER = dict(threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=49152,
               shared_memory_per_core=233472, threads_per_core_limit=2048, core_count=132, fpus_per_core=128,
               block_dim_limit_x=2147483647, block_dim_limit_y=65535, block_dim_limit_z=65535,
               l2_cache_size=52428800, clock_rate_ghz=1.98, shared_memory_per_block_optin=232448,
               registers_per_core_limit=65536, registers_per_block_limit=65536)
GPU_SPECS = {
    "h100": dict(_HOPPER, device_memory_size=84942979072, memory_bandwidth=3352320000000, name="NVIDIA H100 80GB HBM3"),
    "h200": dict(_HOPPER, device_memory_size=150754820096, memory_bandwidth=4800000000000, name="NVIDIA H200"),
}


def gpu_target_config(kind: str, *, cudnn_version: str = "9.10.0") -> str:
    """The GpuTargetConfigProto text XLA's CUDA compiler takes to compile for GPU `kind` ("h100",
    "h200") with no GPU attached (`jax.experimental.topologies.get_topology_desc(platform="cuda",
    target_config=..., topology="1x1x1")`). cudnn_version: the cuDNN the programs will run with."""
    spec = dict(GPU_SPECS[kind])
    name = spec.pop("name")
    lines = [f"  {k}: {v}" for k, v in spec.items()]
    major, minor, patch = (int(x) for x in cudnn_version.split("."))
    return ("gpu_device_info {\n" + "\n".join(lines) + "\n  cuda_compute_capability { major: 9 minor: 0 }\n"
            f'  name: "{name}"\n}}\nplatform_name: "CUDA"\n'
            f"dnn_version_info {{ major: {major} minor: {minor} patch: {patch} }}\n"
            f'device_description_str: "{name}"\n')
