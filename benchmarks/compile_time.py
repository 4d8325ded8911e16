"""Compile time of the TI2V-Zero sampler does not grow with N (new frames) or S (steps).

Tiny random U-Net and VAE (our Flax models, random init) in pixel-slide mode, or
`--toy` for a linear toy network. Prints compile times (lower + compile, apart
from run time) for (N=2, S=2) and (N=15, S=10), then calls the small program again
with other inputs and shows the jit cache does not grow.

    python benchmarks/compile_time.py [--toy] [--frames K] [--resample R]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import sampler_call  # noqa: E402

from ti2v_jax import sampling as S  # noqa: E402

TINY_UNET = dict(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
                 up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], layers_per_block=1, norm_num_groups=8,
                 attention_head_dim=8, cross_attention_dim=32, in_channels=4, out_channels=4, sample_size=16)
TINY_VAE = dict(latent_channels=4, block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=32,
                down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
SCALE = 0.18215


def networks(toy: bool):
    """(params, denoise(params, ...), encode(params, ...), decode(params, ...), image size)."""
    if toy:
        w = jax.random.normal(jax.random.key(0), (12, 4)) * 0.3
        m = jax.random.normal(jax.random.key(1), (4, 4)) * 0.3

        def s2d(f):
            b, n, h, w_, _ = f.shape
            return f.reshape(b, n, h // 2, 2, w_ // 2, 2, 3).transpose(0, 1, 2, 4, 3, 5, 6).reshape(
                b, n, h // 2, w_ // 2, 12)

        def d2s(z):
            b, n, h, w_, _ = z.shape
            return z.reshape(b, n, h, w_, 2, 2, 3).transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, n, 2 * h, 2 * w_, 3)

        return ((w, m), lambda p, x, t, c: jnp.tanh(x @ p[1]) * jnp.sin(t / 100.0)[:, None, None, None, None]
                + c.mean((1, 2))[:, None, None, None, None],
                lambda p, f: s2d(f) @ p[0], lambda p, z: d2s(z @ p[0].T), 32)
    from ti2v_jax.models.unet3d import UNet3DConditionModel
    from ti2v_jax.models.vae import AutoencoderKL
    ug, us = nnx.split(UNet3DConditionModel(TINY_UNET, rngs=nnx.Rngs(0)))
    vg, vs = nnx.split(AutoencoderKL(TINY_VAE, rngs=nnx.Rngs(1)))

    def per_frame(fn, a):  # the VAE works on (N, H, W, C) images: fold the frames into the batch
        b, f = a.shape[:2]
        out = fn(a.reshape((b * f,) + a.shape[2:]))
        return out.reshape((b, f) + out.shape[1:])

    return ((us, vs), lambda p, x, t, c: nnx.merge(ug, p[0])(x, t, c),
            lambda p, f: per_frame(lambda i: nnx.merge(vg, p[1]).encode(i)[0], f) * SCALE,
            lambda p, z: per_frame(lambda i: nnx.merge(vg, p[1]).decode(i / SCALE), z), 32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--toy", action="store_true")
    ap.add_argument("--frames", type=int, default=8, help="K, frames the model denoises at once")
    ap.add_argument("--resample", type=int, default=2, help="R, resampling iterations")
    args = ap.parse_args()
    params, denoise, encode, decode, size = networks(args.toy)
    k, b = args.frames, 1

    @functools.partial(jax.jit, static_argnames=("num_new_frames",))
    def sample(params, key, frames, ctx, uctx, timesteps, guidance_scale, *, num_new_frames):
        return sampler_call(
            S.ti2v_zero_sample, key, functools.partial(denoise, params), ctx, uctx,
            functools.partial(encode, params), functools.partial(decode, params), frames, num_frames=k,
            num_new_frames=num_new_frames, timesteps=timesteps, guidance=guidance_scale,
            resample=args.resample, slide="pixel")

    def inputs(seed):
        ks = jax.random.split(jax.random.key(seed), 3)
        return (jax.random.uniform(ks[0], (b, 1, size, size, 3), minval=-1, maxval=1),
                jax.random.normal(ks[1], (b, 7, 32)), jax.random.normal(ks[2], (b, 7, 32)))

    print(f"backend {jax.default_backend()}, {'toy' if args.toy else 'tiny U-Net + VAE'}, "
          f"K={k}, R={args.resample}, pixel slide, guidance on")
    for n, steps in [(2, 2), (15, 10)]:
        ts = S.ddim_timesteps(steps)
        a = (params, jax.random.key(0), *inputs(0), ts, jnp.float32(9.0))
        t0 = time.perf_counter()
        lowered = sample.lower(*a, num_new_frames=n)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        print(f"N={n:2d} S={steps:2d}: trace+lower {t1 - t0:6.2f} s, compile {t2 - t1:6.2f} s "
              f"({n * steps * (args.resample + 1)} U-Net passes per item in the program)")

    ts = S.ddim_timesteps(2)
    for i in range(3):
        t0 = time.perf_counter()
        out = sample(params, jax.random.key(i), *inputs(i), ts, jnp.float32(7.0 + i), num_new_frames=2)
        jax.block_until_ready(out)
        print(f"call {i} (N=2, S=2, new key/image/text/guidance): {time.perf_counter() - t0:6.2f} s, "
              f"jit cache size {sample._cache_size()}")


if __name__ == "__main__":
    main()
