"""A/B of XLA compiler options on the sampling loop: one latent-slide frame program, interleaved.

    python benchmarks/gpu/ab_options.py --config full --dtype bfloat16 [--steps 2 --resample 4]
                                        [--sets default,cmdbuf_loops,no_cmdbuf] [--rounds 3]

Written for the next GPU lease (not yet run on a GPU): on the H100, 7 of a guidance pair's
42.9 ms were gaps between its ~2,400 kernel launches (benchmarks/RESULTS.md), and a frame
program runs its U-Net inside `lax.scan` loops, which XLA's default command buffers (CUDA
graphs) may not capture. Each option set compiles the frame program once
(`sampling.ti2v_zero_frame` on a random-weight U-Net built in JAX: no checkpoint, no VAE,
no PyTorch) with `jax.jit(..., compiler_options=...)`; the rounds then time every set in
turn. A set this jaxlib refuses is reported and skipped. Output: text on stdout and
`--out`/ab_options_<config>_<dtype>.txt.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]
from bench import Report, auto_attention  # noqa: E402
from configs import get as get_config  # noqa: E402

from ti2v_jax.models import layers  # noqa: E402
from ti2v_jax.models.unet3d import UNet3DConditionModel  # noqa: E402
from ti2v_jax.sampling import schedule  # noqa: E402
from ti2v_jax.sampling.ti2v_zero import ti2v_zero_frame  # noqa: E402
from ti2v_jax.xla_options import compiler_options  # noqa: E402

_CMDBUF = "xla_gpu_enable_command_buffer"
# name -> options added to ti2v-jax's own for the platform (`xla_options.compiler_options`)
SETS = {
    "default": {},
    # XLA's default command-buffer kinds plus the loops and conditionals of the scans
    "cmdbuf_loops": {_CMDBUF: "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"},
    "no_cmdbuf": {_CMDBUF: ""},  # what command buffers bring at all
    "no_triton_gemm": {"xla_gpu_enable_triton_gemm": False},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small", choices=["small", "full"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2, help="DDIM steps S of the timed frame (pairs: S x (R+1))")
    ap.add_argument("--resample", type=int, default=4)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    say = Report()

    dt = jnp.dtype(a.dtype)
    gpu = jax.default_backend() == "gpu"
    layers.set_attention_implementation(auto_attention(gpu, dt))
    cfg = dict(get_config(a.config)["unet"])
    model = UNet3DConditionModel(cfg, dtype=dt, param_dtype=dt, rngs=nnx.Rngs(0))
    g, st = nnx.split(model)
    lat, c_in = cfg.get("sample_size", 32), cfg.get("in_channels", 4)
    s0 = jax.random.normal(jax.random.key(1), (1, a.frames - 1, lat, lat, c_in)).astype(dt)
    ctx = jax.random.normal(jax.random.key(2), (2, 1, 77, cfg["cross_attention_dim"])).astype(dt)
    keys = schedule.item_keys(jax.random.key(0), 1)
    timesteps = jnp.asarray(schedule.ddim_timesteps(a.steps))
    pairs = a.steps * (a.resample + 1)
    say(f"config {a.config}, {dt.name}, K={a.frames}, S={a.steps}, R={a.resample} ({pairs} guidance pairs per "
        f"call), devices {jax.devices()}, jax {jax.__version__}")

    def frame(st, keys, s0, text, empty, timesteps):
        denoise = schedule.shares_samples(lambda x, t, c: nnx.merge(g, st)(x, t, c))
        return ti2v_zero_frame(keys, denoise, s0, text, empty, num_frames=a.frames, timesteps=timesteps,
                               resample_iters=a.resample)

    args = (st, keys, s0, ctx[1], ctx[0], timesteps)
    fns = {}
    for name in a.sets.split(","):
        opts = {**compiler_options(), **SETS[name]}
        t0 = time.perf_counter()
        try:
            fns[name] = jax.jit(frame, compiler_options=opts or None).lower(*args).compile()
            jax.block_until_ready(fns[name](*args))  # the first run's one-time costs
        except Exception as e:  # noqa: BLE001 - a refused option: say so, go on
            say(f"{name}: refused ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            continue
        say(f"{name}: compile + first run {time.perf_counter() - t0:.1f} s, options {opts}")
    res = {n: [] for n in fns}
    for _ in range(a.rounds):
        for n, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            res[n].append(time.perf_counter() - t0)
    for n, v in res.items():
        m = statistics.median(v)
        say(f"{n:16s} frame ({pairs} pairs) median {m:.3f} s = {m / pairs * 1e3:.1f} ms per pair; "
            f"x50 pairs (S=10, R=4): {m / pairs * 50:.2f} s; rounds {[round(x, 3) for x in v]}")
    say.write(a.out, f"ab_options_{a.config}_{dt.name}.txt")


if __name__ == "__main__":
    main()
