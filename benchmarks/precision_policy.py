"""Deviation of bfloat16 / float16 runs from the float32 run on the shipped tiny default model.

TI2V, pixel slide, S=10, R=4, g=9, 3 new frames, seed 0, start examples/start_red_circle.png,
prompt "a red circle moving right". Prints the max abs deviation of the new latents and of the
uint8 frames (levels) for each half dtype against float32.

Runs against either code version (for the before/after table of issue 23):
  old sampler (everything in the chosen dtype: state, queues, VAE, text encoder):
      git worktree add /tmp/before <commit>; PYTHONPATH=/tmp/before python3 benchmarks/precision_policy.py
  new programs (float32 sampler state; U-Net in the chosen dtype, VAE and text encoder float32):
      python3 benchmarks/precision_policy.py
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ti2v_jax import io, loading, programs
from ti2v_jax.parallel import per_item_keys
from ti2v_jax.pipeline import DEFAULT_MODEL
from ti2v_jax.sampling import schedule

IMAGE = Path(__file__).resolve().parents[1] / "examples" / "start_red_circle.png"
PROMPT = "a red circle moving right"
S, R, G, N, K = 10, 4, 9.0, 3, 8


def run_new(dtype):
    c32 = loading.load(DEFAULT_MODEL, dtype=jnp.float32)
    comps = c32
    if dtype != "float32":
        half = loading.load(DEFAULT_MODEL, dtype=jnp.dtype(dtype))
        comps = dataclasses.replace(c32, unet=half.unet, unet_apply=half.unet_apply)
        if hasattr(comps, "dtypes"):  # Components.dtypes: the compute dtype of each network
            comps = dataclasses.replace(comps, dtypes={**comps.dtypes, "unet": jnp.dtype(dtype)})
    abar = schedule.alphas_cumprod()
    spec = programs.ProgramSpec(comps, K, abar)
    frames = jnp.asarray(io.load_image(IMAGE, (32, 32))[None, None], jnp.float32)
    from ti2v_jax.tokenizer import tokenize
    ids = jnp.asarray(tokenize(comps.tokenizer, [PROMPT, ""]))
    ctx = comps.text_encode(comps.params["text_encoder"], ids).astype(jnp.float32)
    text, empty = ctx[:1], ctx[1:]
    row = lambda v, dt: jnp.full((1, S), v, dt)  # noqa: E731
    ts = jnp.asarray(schedule.ddim_timesteps(S))[None]
    fn = jax.jit(lambda p, *a: programs.ti2v_program(
        spec, p, *a, num_new_frames=N, max_resample=R, guided=True, stochastic=False, inversion=True,
        slide="pixel", baseline=False))
    lat, px = fn(comps.params, per_item_keys([0]), frames, text, empty, ts, row(G, jnp.float32),
                 row(0.0, jnp.float32), row(R, jnp.int32), jnp.zeros((1,), jnp.int32))
    return np.asarray(lat, np.float32)[0], io.to_uint8(np.asarray(px, np.float32))[0], str(lat.dtype)


def run_old(dtype):
    from ti2v_jax.pipeline import TI2VZeroPipeline
    from ti2v_jax.sampling.ti2v_zero import ti2v_zero_sample
    pipe = TI2VZeroPipeline.from_pretrained(dtype=dtype)
    frames = io.load_image(IMAGE, (32, 32))[None, None]
    try:
        text, empty = pipe.contexts([PROMPT])
    except ValueError:  # XLA:CPU has no float16 dot with float32 accumulation: text encoder in float32
        print(f"  ({dtype}: the old pipeline's text encoder fails on this backend; contexts from float32, cast)")
        text, empty = (a.astype(dtype) for a in TI2VZeroPipeline.from_pretrained().contexts([PROMPT]))
    ts = jnp.asarray(schedule.ddim_timesteps(S))
    fn = jax.jit(lambda p, keys, f, c, u: ti2v_zero_sample(
        keys, *pipe._spec.fns(p), f, c, u, num_frames=K, num_new_frames=N, timesteps=ts, guidance_scale=G,
        resample_iters=R, slide="pixel", abar=pipe.abar))
    lat, px = fn(pipe.params, per_item_keys([0]), jnp.asarray(frames, pipe.dtype), text, empty)
    return np.asarray(lat, np.float32)[0], io.to_uint8(np.asarray(px, np.float32))[0], str(lat.dtype)


def main():
    new = hasattr(programs, "progress")
    run = run_new if new else run_old
    print(f"code: {'new programs (float32 sampler state)' if new else 'old sampler (all in dtype)'}; "
          f"TI2V pixel slide S={S} R={R} g={G} N={N} seed 0, default model")
    base_lat, base_px, _ = run("float32")
    for d in ("bfloat16", "float16"):
        t = time.time()
        try:
            lat, px, state = run(d)
        except Exception as e:  # e.g. XLA:CPU has no float16 dot with float32 accumulation
            print(f"{d:9s}: failed on {jax.default_backend()}: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        dl = np.abs(lat - base_lat).max()
        dp = px.astype(int) - base_px.astype(int)
        print(f"{d:9s} vs float32: latents max abs {dl:.3e} (max |latent| {np.abs(base_lat).max():.2f}); "
              f"uint8 frames {dp.min():+d}..{dp.max():+d} levels, {np.mean(dp != 0) * 100:.1f}% of values differ, "
              f"mean |diff| {np.abs(dp).mean():.3f}; returned latents {state} ({time.time() - t:.0f} s)")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
