"""A/B of XLA compiler options (and the attention kernel) on the sampling loop: one
latent-slide frame program, interleaved.

    python benchmarks/gpu/ab_options.py --config full --dtype bfloat16 [--steps 2 --resample 4]
                                        [--sets default,triton_gemm,xla_attention] [--rounds 3] [--profile]

First run on an H200 (2026-11-27, benchmarks/RESULTS.md): command buffers over the scans'
loops changed nothing, XLA's attention was 2% slower than cuDNN's, and turning Triton's
matrix-product fusions off was 2.5% faster, now the package default on GPU
(`ti2v_jax.platforms`); `--profile` then sums the device kernels of the first set's program.
Each option set compiles the frame program once
(`sampling.ti2v_zero_frame` on a random-weight U-Net built in JAX: no checkpoint, no VAE,
no PyTorch) with `jax.jit(..., compiler_options=...)`; the rounds then time every set in
turn. A set this jaxlib refuses is reported and skipped; each set's traced and compiled
program is named by a short hash, so a set that changes nothing shows as the same program. Output: text on stdout and
`--out`/ab_options_<config>_<dtype>.txt.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]
from ab_unet import unet_with  # noqa: E402
from bench import Report, sampler_call  # noqa: E402
from configs import get as get_config  # noqa: E402

from profile_unet import kernel_profile  # noqa: E402  (this script's own folder)

from ti2v_jax.sampling import schedule  # noqa: E402
from ti2v_jax.sampling.ti2v_zero import ti2v_zero_frame  # noqa: E402
from ti2v_jax.platforms import compiler_options  # noqa: E402

_CMDBUF = "xla_gpu_enable_command_buffer"
# name -> options added to ti2v-jax's own for the platform (`platforms.compiler_options`)
SETS = {
    "default": {},
    # XLA's default command-buffer kinds plus the loops and conditionals of the scans
    "cmdbuf_loops": {_CMDBUF: "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"},
    "no_cmdbuf": {_CMDBUF: ""},  # what command buffers bring at all
    # ti2v-jax turns Triton's matrix-product fusions off on GPU (`platforms`): this puts them back
    "triton_gemm": {"xla_gpu_enable_triton_gemm": True},
    "cublaslt": {"xla_gpu_enable_cublaslt": True},  # cuBLASLt, with its epilogue fusions
    "cudnn_gemm_fusion": {"xla_gpu_cudnn_gemm_fusion_level": 2},  # cuDNN for fused products
    # not an XLA option: XLA's attention instead of cuDNN's fused kernel (standalone, the
    # temporal attention's 16-token sequences ran faster in XLA; in the frame program, 2% slower)
    "xla_attention": {"attention": "xla"},
    # not an XLA option: the U-Net's opt-in one-pass GroupNorm (layers.GROUP_NORM_CHOICES)
    "one_pass_group_norm": {"group_norm": "one_pass"},
}
# the keys of a set that are model constructor arguments, not compiler options
MODEL_KEYS = ("attention", "group_norm")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small", choices=["small", "full"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2, help="DDIM steps S of the timed frame (pairs: S x (R+1))")
    ap.add_argument("--resample", type=int, default=4)
    ap.add_argument("--sets", default="default,triton_gemm,cublaslt,cudnn_gemm_fusion",
                    help=f"comma list, compiled in this order, of: {', '.join(SETS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true",
                    help="then a kernel-level profile of the first set's frame program, per pair")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    say = Report()

    dt = jnp.dtype(a.dtype)
    cfg = dict(get_config(a.config)["unet"])
    model = unet_with(cfg, dt, None)  # attention: the platform's automatic choice
    st = nnx.state(model)
    lat, c_in = cfg.get("sample_size", 32), cfg.get("in_channels", 4)
    s0 = jax.random.normal(jax.random.key(1), (1, a.frames - 1, lat, lat, c_in)).astype(dt)
    ctx = jax.random.normal(jax.random.key(2), (2, 1, 77, cfg["cross_attention_dim"])).astype(dt)
    keys = schedule.item_keys(jax.random.key(0), 1)
    timesteps = jnp.asarray(schedule.ddim_timesteps(a.steps))
    pairs = a.steps * (a.resample + 1)
    say(f"config {a.config}, {dt.name}, K={a.frames}, S={a.steps}, R={a.resample} ({pairs} guidance pairs per "
        f"call), devices {jax.devices()}, jax {jax.__version__}")

    def frame(g, st, keys, s0, text, empty, timesteps):
        denoise = schedule.shares_samples(lambda x, t, c: nnx.merge(g, st)(x, t, c))
        return sampler_call(ti2v_zero_frame, keys, denoise, text, empty, s0, num_frames=a.frames,
                            timesteps=timesteps, guidance=9.0, resample=a.resample)

    args = (st, keys, s0, ctx[1], ctx[0], timesteps)
    fns = {}
    for name in a.sets.split(","):
        opts = {**compiler_options(), **SETS[name]}
        att = opts.pop("attention", None)
        gn = opts.pop("group_norm", "two_pass")
        # the set's model arguments are part of the model's graph definition, hence of the trace
        g = nnx.graphdef(unet_with(cfg, dt, att, like=model, group_norm=gn))
        t0 = time.perf_counter()
        try:
            lowered = jax.jit(lambda *x, g=g: frame(g, *x), compiler_options=opts or None).lower(*args)
            fns[name] = lowered.compile()
            jax.block_until_ready(fns[name](*args))  # the first run's one-time costs
        except Exception as e:  # noqa: BLE001 - a refused option: say so, go on
            say(f"{name}: refused ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            continue
        t1 = time.perf_counter()
        jax.block_until_ready(fns[name](*args))  # one timing now, in case the rounds are cut short
        # short hashes of the traced and of the compiled program: equal ones mean one program
        ids = [hashlib.sha1(x.as_text().encode()).hexdigest()[:8] for x in (lowered, fns[name])]
        say(f"{name}: compile + first run {t1 - t0:.1f} s, second run {time.perf_counter() - t1:.3f} s, "
            f"attention {att or 'automatic'}, options {opts}, program traced/compiled {ids[0]}/{ids[1]}")
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
    if a.profile and fns:
        name = next(iter(fns))
        say(f"\nkernel profile of {name}'s frame program ({pairs} pairs a call, 2 calls)")
        kernel_profile(fns[name], args, say, calls=2, per_call=pairs, unit="pair", top=30)
    say.write(a.out, f"ab_options_{a.config}_{dt.name}.txt")


if __name__ == "__main__":
    main()
