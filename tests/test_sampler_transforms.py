"""Every public sampler function under jax.jit, jax.grad and jax.vmap, as the README promises.

A toy denoiser and VAE (a few elementwise maps and a 2x2 pooling, tiny shapes), so each
transform compiles in seconds. jit: equal to the eager call; grad: finite, non-zero and equal
to a central difference along a random direction; vmap: equal to the calls one by one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ti2v_jax import sampling as S

K, HW, C, T, D, STEPS = 3, 4, 4, 2, 3, 2
TS = S.ddim_timesteps(STEPS)
W_ENC = jnp.asarray(np.random.default_rng(0).standard_normal((3, C)) * 0.5, jnp.float32)


def denoise(x, t, ctx):
    return jnp.tanh(0.5 * x + ctx.mean(axis=(1, 2))[:, None, None, None, None] + t[:, None, None, None, None] / 1e3)


def encode(frames):  # (B, F, H, W, 3) -> (B, F, H/2, W/2, C)
    b, f, h, w, _ = frames.shape
    pooled = frames.reshape(b, f, h // 2, 2, w // 2, 2, 3).mean(axis=(3, 5))
    return pooled @ W_ENC


def decode(z):  # (B, F, h, w, C) -> (B, F, 2h, 2w, 3)
    px = jnp.tanh(z @ W_ENC.T)
    return jnp.repeat(jnp.repeat(px, 2, axis=2), 2, axis=3)


def _inputs(b=1, seed=1):
    rng = np.random.default_rng(seed)
    frames = jnp.asarray(rng.uniform(-1, 1, (b, 1, HW, HW, 3)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((b, T, D)), jnp.float32)
    uctx = jnp.asarray(rng.standard_normal((b, T, D)), jnp.float32)
    return frames, ctx, uctx


def _guided(ctx, uctx):
    return S.cfg_denoiser(denoise, ctx, uctx)


KEY = jax.random.key(3)
COMMON = dict(num_frames=K, timesteps=TS, guidance=jnp.array([7.0, 3.0]), resample=1, eta=0.3)


# Each sampler as a function of (start frames, contexts) -> one array, at batch 1.
def ti2v_zero_sample(frames, ctx, uctx):
    return S.ti2v_zero_sample(KEY, _guided(ctx, uctx), encode, decode, frames, num_new_frames=2, **COMMON)[1]


def ti2v_zero_frame(frames, ctx, uctx):
    queue = S.pad_queue(encode(frames), K - 1)
    return S.ti2v_zero_frame(S.item_keys(KEY, frames.shape[0]), _guided(ctx, uctx), queue, **COMMON)


def slide_frame(frames, ctx, uctx):
    queue = S.pad_queue(encode(frames), K - 1)
    return S.slide_frame(S.item_keys(KEY, frames.shape[0]), _guided(ctx, uctx), encode, decode, queue, **COMMON)[0]


def replacing_baseline_sample(frames, ctx, uctx):
    return S.replacing_baseline_sample(KEY, _guided(ctx, uctx), encode(frames)[:, 0], num_frames=K, timesteps=TS,
                                       guidance=jnp.array([7.0, 3.0]), eta=0.3)


def t2v_sample(frames, ctx, uctx):
    x_t = jnp.broadcast_to(encode(frames), (frames.shape[0], K) + encode(frames).shape[2:])
    return S.t2v_sample(KEY, _guided(ctx, uctx), x_t, timesteps=TS, guidance=jnp.array([7.0, 3.0]), eta=0.3)


_, ROWS = S.grid(STEPS, guidance=[3.0, 9.0], resample=[0, 1])


def sample_grid(frames, ctx, uctx):
    # The README's call: rows from `grid`, no max_resample (read from the concrete rows).
    return S.sample_grid(KEY, _guided(ctx, uctx), encode, decode, frames, rows=ROWS, num_frames=K,
                         num_new_frames=1, timesteps=TS)[1]


SAMPLERS = [ti2v_zero_sample, ti2v_zero_frame, slide_frame, replacing_baseline_sample, t2v_sample, sample_grid]


@functools.cache
def _jitted(fn):
    """One jitted function per sampler, shared by the tests below (one compile per input shape)."""
    return jax.jit(fn)


@pytest.mark.slow
@pytest.mark.parametrize("fn", SAMPLERS, ids=lambda f: f.__name__)
def test_jit(fn):
    args = _inputs()
    eager = fn(*args)
    jitted = _jitted(fn)(*args)
    assert bool(jnp.isfinite(jitted).all())
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fn", SAMPLERS, ids=lambda f: f.__name__)
def test_grad(fn):
    frames, ctx, uctx = _inputs()
    loss = lambda f, c: (fn(f, c, uctx) ** 2).mean()  # noqa: E731
    g_frames, g_ctx = jax.jit(jax.grad(loss, argnums=(0, 1)))(frames, ctx)
    for g in (g_frames, g_ctx):
        assert bool(jnp.isfinite(g).all())
    assert float(jnp.abs(g_ctx).max()) > 0  # the context reaches every sampler's output
    # A central difference along a random direction of (frames, ctx).
    rng = np.random.default_rng(7)
    df = jnp.asarray(rng.standard_normal(frames.shape), jnp.float32)
    dc = jnp.asarray(rng.standard_normal(ctx.shape), jnp.float32)
    eps, f = 1e-2, jax.jit(loss)
    numeric = (f(frames + eps * df, ctx + eps * dc) - f(frames - eps * df, ctx - eps * dc)) / (2 * eps)
    analytic = jnp.vdot(g_frames, df) + jnp.vdot(g_ctx, dc)
    print(f"{fn.__name__}: directional derivative {float(analytic):.6f}, central difference {float(numeric):.6f}")
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=2e-2, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fn", SAMPLERS, ids=lambda f: f.__name__)
def test_vmap(fn):
    frames, ctx, uctx = _inputs(b=2, seed=2)
    # vmap over a leading axis of batch-1 calls: 2 starts with their own contexts.
    mapped = jax.jit(jax.vmap(fn))(frames[:, None], ctx[:, None], uctx[:, None])
    for i in range(2):
        one = _jitted(fn)(frames[i:i + 1], ctx[i:i + 1], uctx[i:i + 1])
        np.testing.assert_allclose(np.asarray(mapped[i]), np.asarray(one), atol=1e-5)


def test_sample_grid_traced_rows_need_max_resample():
    """Rows passed as jit arguments are traced: a clear error without max_resample, fine with it."""
    frames, ctx, uctx = _inputs()
    run = lambda rows, **kw: S.sample_grid(KEY, _guided(ctx, uctx), encode, decode, frames, rows=rows,  # noqa: E731
                                           num_frames=K, num_new_frames=1, timesteps=TS, **kw)[1]
    with pytest.raises(ValueError, match="max_resample"):
        jax.jit(run)(ROWS)
    traced = jax.jit(lambda rows: run(rows, max_resample=1))(ROWS)
    np.testing.assert_allclose(np.asarray(traced), np.asarray(_jitted(sample_grid)(frames, ctx, uctx)), atol=1e-5)
