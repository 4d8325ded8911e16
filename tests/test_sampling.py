"""Samplers: schedule vs diffusers, scan samplers vs the eager NumPy reference, properties, grads."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ti2v_jax import MS17B_CONFIGS
from ti2v_jax import sampling as S
import reference_numpy as ref

CONFIG_DIR = str(MS17B_CONFIGS)
K, B, HW, T, D = 4, 2, 8, 3, 8  # latents (B, K, 4, 4, 4)


# --- toy network: the same maths in NumPy (reference) and jax.numpy (sampler) ---------

class Toy:
    """A fixed random map mixing frames and channels, depending on t and the context."""

    def __init__(self, seed=0, c=4):
        rng = np.random.default_rng(seed)
        self.A = np.eye(K) * 0.6 + 0.2 * rng.standard_normal((K, K))
        self.W = 0.4 * rng.standard_normal((c, c))
        self.P = 0.3 * rng.standard_normal((D, c))
        self.E = 0.3 * rng.standard_normal((12, c))   # 2x2x3 pixels -> c
        self.Dm = 0.5 * rng.standard_normal((c, 12))  # c -> 2x2x3 pixels

    def denoise(self, xp, x, t, ctx):  # x (B,K,h,w,C), t (B,), ctx (B,T,D)
        a, w, p = (xp.asarray(m, dtype=x.dtype) for m in (self.A, self.W, self.P))
        mixed = xp.einsum("kl,blhwc,cd->bkhwd", a, x, w)
        s = xp.sin(xp.asarray(t, dtype=x.dtype) / 100.0).reshape(-1, 1, 1, 1, 1)
        bias = (ctx.mean(1).astype(x.dtype) @ p)[:, None, None, None, :]
        return xp.tanh(mixed) * (1.0 + 0.5 * s) + bias + 0.1 * x

    def encode(self, xp, f):  # (B,F,H,W,3) -> (B,F,H/2,W/2,C)
        b, n, h, w, _ = f.shape
        f = f.reshape(b, n, h // 2, 2, w // 2, 2, 3).transpose(0, 1, 2, 4, 3, 5, 6)
        return f.reshape(b, n, h // 2, w // 2, 12) @ xp.asarray(self.E, dtype=f.dtype)

    def decode(self, xp, z):
        b, n, h, w, _ = z.shape
        f = (z @ xp.asarray(self.Dm, dtype=z.dtype)).reshape(b, n, h, w, 2, 2, 3)
        return f.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, n, 2 * h, 2 * w, 3)

    def jax_fns(self):
        return (functools.partial(self.denoise, jnp), functools.partial(self.encode, jnp),
                functools.partial(self.decode, jnp))

    def np_fns(self):
        return (lambda x, t, c: self.denoise(np, x[None], np.array([t]), c[None])[0],
                lambda f: self.encode(np, f[None])[0], lambda z: self.decode(np, z[None])[0])


TOY = Toy()


# --- the samplers under the keyword names these tests were written with ------------------
# (contexts and scale in, the guided denoiser built here: `cfg_denoiser` is the samplers' API)

def _guided(denoise, context, uncond_context, g):
    return S.cfg_denoiser(denoise, context, uncond_context, guided=not (isinstance(g, (int, float)) and g == 1))


def ti2v(key, denoise, encode, decode, frames=None, context=None, uncond_context=None, *, guidance_scale=9.0,
         resample_iters=4, **kw):
    return S.ti2v_zero_sample(key, _guided(denoise, context, uncond_context, guidance_scale), encode, decode,
                              frames, guidance=guidance_scale, resample=resample_iters, **kw)


def baseline(key, denoise, image_latent, context, uncond_context, *, guidance_scale=9.0, **kw):
    return S.replacing_baseline_sample(key, _guided(denoise, context, uncond_context, guidance_scale),
                                       image_latent, guidance=guidance_scale, **kw)


def t2v(key, denoise, x_T, context, uncond_context, *, guidance_scale=9.0, **kw):
    return S.t2v_sample(key, _guided(denoise, context, uncond_context, guidance_scale), x_T,
                        guidance=guidance_scale, **kw)


def batch_keys(seed, b=B):
    """A batch's keys, one per video: `jax.random.split(jax.random.key(seed), b)`."""
    return jax.random.split(jax.random.key(seed), b)


@functools.partial(jax.jit, static_argnums=(2,))
def _draw(key, path, shape):
    for n in range(path.shape[0]):
        key = jax.random.fold_in(key, path[n])
    return jax.random.normal(key, shape, jnp.float32)


def keyed_noise(keys, eta, frames=K, per_frame=True):
    """The reference's noise source, following the key scheme in ti2v_zero's docstring: item b's
    key k_b = keys[b], k_i = k_b/i; init = normal(k_i/0); step j's draw d = normal(k_i/1/j/d) of
    `frames` frames, with d = 0 noisy, 1 noisy_next, 2+2r eta noise, 3+2r push-back (k_b for k_i
    if not per_frame)."""

    def noise(b, name, shape):
        kind, idx = name[0], list(name[1:])
        if kind == "eta" and np.all(np.asarray(eta) == 0):
            return np.zeros(shape)
        path = [idx.pop(0)] if per_frame else []
        if kind == "init":
            path += [0]
        else:
            r = idx[1] if len(idx) > 1 else 0
            d = {"noisy": 0, "noisy_next": 1, "eta": 2 + 2 * r, "push": 3 + 2 * r}[kind]
            path += [1, idx[0], d]
        full = (frames,) + tuple(shape[-3:])
        z = np.asarray(_draw(keys[b], jnp.asarray(path, jnp.int32), full), np.float64)
        return z[0] if len(shape) == 3 else z[:shape[0]]
    return noise


def inputs(m, dtype, seed=1):
    rng = np.random.default_rng(seed)
    frames = rng.uniform(-1, 1, (B, m, HW, HW, 3))
    ctx = rng.standard_normal((B, T, D))
    uctx = rng.standard_normal((B, T, D))
    return [jnp.asarray(a, dtype) for a in (frames, ctx, uctx)]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# --- schedule ------------------------------------------------------------------------

def _diffusers_ddim():
    from diffusers import DDIMScheduler
    with open(os.path.join(CONFIG_DIR, "scheduler.json")) as fh:
        return DDIMScheduler.from_config(json.load(fh))


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 25, 50])
def test_timesteps_match_diffusers(steps):
    sched = _diffusers_ddim()
    sched.set_timesteps(steps)
    np.testing.assert_array_equal(S.ddim_timesteps(steps), sched.timesteps.numpy())
    # t_next is diffusers' prev_timestep, with abar[0] where it goes below 0.
    t = sched.timesteps.numpy()
    np.testing.assert_array_equal(np.asarray(S.next_timesteps(S.ddim_timesteps(steps))),
                                  np.maximum(t - 1000 // steps, 0))


def test_alphas_cumprod_match_diffusers():
    sched = _diffusers_ddim()
    err = np.abs(np.asarray(S.alphas_cumprod()) - sched.alphas_cumprod.numpy()).max()
    print("alphas_cumprod max abs err vs diffusers (their float32 cumprod):", err)
    assert err < 1e-6
    with jax.enable_x64(True):
        np.testing.assert_array_equal(np.asarray(S.alphas_cumprod(dtype=jnp.float64)), ref.ABAR)
    assert float(sched.final_alpha_cumprod) == pytest.approx(float(S.alphas_cumprod()[0]))


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers(eta):
    import torch
    sched = _diffusers_ddim()
    sched.set_timesteps(7)
    rng = np.random.default_rng(0)
    x, eps, z = (rng.standard_normal((2, 4, 3, 5, 5)).astype(np.float32) for _ in range(3))
    abar = S.alphas_cumprod()
    worst = 0.0
    for t, tn in zip(S.ddim_timesteps(7), np.asarray(S.next_timesteps(S.ddim_timesteps(7)))):
        want = sched.step(torch.from_numpy(eps), int(t), torch.from_numpy(x), eta=eta,
                          variance_noise=torch.from_numpy(z)).prev_sample.numpy()
        got = np.asarray(S.ddim_step(jnp.asarray(x), jnp.asarray(eps), t, tn, abar, eta, jnp.asarray(z)))
        worst = max(worst, np.abs(got - want).max())
    print(f"ddim_step vs diffusers (eta={eta}) max abs err:", worst)
    assert worst < 1e-5


def test_guided_eps_one_batched_call():
    calls = []

    def denoise(x, t, c):
        calls.append((x.shape[0], t.shape, c.shape[0]))
        return TOY.denoise(jnp, x, t, c)

    _, ctx, uctx = inputs(1, jnp.float32)
    x = jax.random.normal(jax.random.key(0), (B, K, 4, 4, 4))
    eps = S.guided_eps(denoise, x, 501, ctx, uctx, 9.0)
    assert calls == [(2 * B, (2 * B,), 2 * B)]
    want = TOY.denoise(jnp, x, jnp.full((B,), 501), uctx)
    want = want + 9.0 * (TOY.denoise(jnp, x, jnp.full((B,), 501), ctx) - want)
    np.testing.assert_allclose(eps, want, atol=1e-5)
    calls.clear()
    S.guided_eps(denoise, x, 501, ctx, uctx, 1.0)
    assert calls == [(B, (B,), B)]  # static g == 1: no unconditional half
    calls.clear()
    S.guided_eps(denoise, x, 501, ctx, uctx, jnp.float32(1.0))
    assert calls == [(2 * B, (2 * B,), 2 * B)]  # an array g is never special-cased

    # A denoise marked as taking n contexts per sample gets x once and both contexts.
    def shared(x, t, c):
        calls.append((x.shape[0], t.shape, c.shape[0]))
        n = c.shape[0] // x.shape[0]
        return TOY.denoise(jnp, jnp.tile(x, (n, 1, 1, 1, 1)), jnp.tile(t, n), c)

    calls.clear()
    got = S.guided_eps(S.shares_samples(shared), x, 501, ctx, uctx, 9.0)
    assert calls == [(B, (B,), 2 * B)] and not hasattr(shared, "shares_samples")
    np.testing.assert_allclose(got, eps, atol=1e-6)


# --- TI2V-Zero vs the NumPy reference (float64) ---------------------------------------

CASES = [  # inversion, R, S, g, slide, eta, M, N
    (True, 2, 3, 9.0, "pixel", 0.0, 1, 5),
    (False, 0, 10, 1.0, "pixel", 0.0, 2, 5),
    (True, 0, 10, 9.0, "latent", 0.0, 1, 5),
    (False, 2, 3, 1.0, "latent", 0.5, 2, 5),
    (True, 2, 10, 9.0, "latent", 0.0, 3, 5),
    (False, 2, 10, 9.0, "pixel", 0.5, 3, 2),
    (True, 0, 3, 1.0, "pixel", 0.0, 1, 5),
    (False, 0, 3, 9.0, "latent", 0.0, 2, 5),
]


@pytest.mark.parametrize("inversion,R,steps,g,slide,eta,M,N", CASES)
def test_ti2v_zero_matches_reference(x64, inversion, R, steps, g, slide, eta, M, N):
    frames, ctx, uctx = inputs(M, jnp.float64)
    key = batch_keys(42)
    ts = S.ddim_timesteps(steps)
    denoise, encode, decode = TOY.jax_fns()
    run = jax.jit(functools.partial(
        ti2v, denoise=denoise, encode=encode, decode=decode, num_frames=K,
        num_new_frames=N, guidance_scale=g, resample_iters=R, eta=eta, ddpm_inversion=inversion,
        slide=slide, abar=S.alphas_cumprod(dtype=jnp.float64)))
    lat, px = run(key, frames=frames, context=ctx, uncond_context=uctx, timesteps=ts)
    assert lat.dtype == jnp.float64
    want_lat, want_px = ref.ti2v_zero(keyed_noise(key, eta), *TOY.np_fns(), np.asarray(frames),
                                      np.asarray(ctx), np.asarray(uctx), K=K, N=N, steps=list(ts),
                                      g=g, R=R, eta=eta, inversion=inversion, slide=slide)
    err_l = np.abs(np.asarray(lat) - want_lat).max()
    err_p = np.abs(np.asarray(px) - want_px).max()
    print(f"ti2v_zero vs reference: latents {err_l:.2e}, frames {err_p:.2e} "
          f"(largest |latent| {np.abs(want_lat).max():.1f})")
    assert lat.shape == (B, N, 4, 4, 4) and px.shape == (B, N, HW, HW, 3)
    assert err_l < 1e-5 and err_p < 1e-5


@pytest.mark.slow
def test_ti2v_zero_given_latents_and_fp32(x64):
    """Latent mode from given latents; and the fp32 path against the float64 reference."""
    frames, ctx, uctx = inputs(2, jnp.float64)
    key, ts = batch_keys(3), S.ddim_timesteps(10)
    denoise, encode, decode = TOY.jax_fns()
    given = encode(frames)
    kw = dict(num_frames=K, num_new_frames=5, timesteps=ts, guidance_scale=9.0, resample_iters=2)
    want, _ = ref.ti2v_zero(keyed_noise(key, 0.0), *TOY.np_fns(), np.asarray(given),
                            np.asarray(ctx), np.asarray(uctx), K=K, N=5, steps=list(ts), g=9.0, R=2,
                            eta=0.0, inversion=True, slide="latent", given_is_latent=True)
    lat, _ = ti2v(key, denoise, None, decode, None, ctx, uctx, slide="latent",
                                latents=given, abar=S.alphas_cumprod(dtype=jnp.float64), **kw)
    err64 = np.abs(np.asarray(lat) - want).max()
    with jax.enable_x64(False):
        f32 = [jnp.asarray(a, jnp.float32) for a in (given, ctx, uctx)]
        lat32, _ = ti2v(key, denoise, None, decode, None, f32[1], f32[2],
                                      slide="latent", latents=f32[0], **kw)
    err32 = np.abs(np.asarray(lat32, np.float64) - want).max()
    print(f"given latents: float64 {err64:.2e}, float32 {err32:.2e}")
    assert err64 < 1e-5 and err32 < 1e-3


@pytest.mark.slow
def test_replacing_baseline_matches_reference(x64):
    frames, ctx, uctx = inputs(1, jnp.float64)
    key, ts = batch_keys(5), S.ddim_timesteps(10)
    denoise, encode, _ = TOY.jax_fns()
    z0 = encode(frames)[:, 0]
    for g, eta in [(9.0, 0.0), (1.0, 0.5)]:
        got = baseline(key, denoise, z0, ctx, uctx, num_frames=K, timesteps=ts,
                                          guidance_scale=g, eta=eta,
                                          abar=S.alphas_cumprod(dtype=jnp.float64))
        want = ref.replacing_baseline(keyed_noise(key, eta, per_frame=False), TOY.np_fns()[0],
                                      np.asarray(z0), np.asarray(ctx), np.asarray(uctx), K=K,
                                      steps=list(ts), g=g, eta=eta)
        err = np.abs(np.asarray(got) - want).max()
        print(f"replacing baseline (g={g}, eta={eta}) vs reference: {err:.2e}")
        assert got.shape == (B, K, 4, 4, 4) and err < 1e-5


@pytest.mark.slow
def test_t2v_matches_reference(x64):
    _, ctx, uctx = inputs(1, jnp.float64)
    key, ts = batch_keys(6), S.ddim_timesteps(7)
    x_T = jax.random.normal(jax.random.key(7), (B, K, 4, 4, 4), jnp.float64)
    for g, eta in [(9.0, 0.0), (1.0, 0.5)]:
        got = t2v(key, TOY.jax_fns()[0], x_T, ctx, uctx, timesteps=ts, guidance_scale=g,
                           eta=eta, abar=S.alphas_cumprod(dtype=jnp.float64))
        want = ref.t2v(keyed_noise(key, eta, frames=K, per_frame=False), TOY.np_fns()[0], np.asarray(x_T),
                       np.asarray(ctx), np.asarray(uctx), steps=list(ts), g=g, eta=eta)
        err = np.abs(np.asarray(got) - want).max()
        print(f"t2v (g={g}, eta={eta}) vs reference: {err:.2e}")
        assert err < 1e-5


# --- properties -----------------------------------------------------------------------

@pytest.mark.slow
def test_queue_frames_are_the_noised_queue_at_every_pass():
    """Every U-Net input holds, in its first K-1 frames, the replaced (noised) queue:
    q_sample(s0, t, z) on the first pass of a step, the pushed-back noisy_next after."""
    frames, ctx, uctx = inputs(2, jnp.float32)
    denoise, encode, decode = TOY.jax_fns()
    seen = []

    def recording(x, t, c):
        jax.debug.callback(lambda x, t: seen.append((np.asarray(x), np.asarray(t))), x, t,
                           ordered=True)
        return denoise(x, t, c)

    key, ts, R, N = batch_keys(9), S.ddim_timesteps(3), 2, 3
    given = encode(frames)
    lat, _ = jax.jit(functools.partial(
        ti2v, denoise=recording, encode=None, decode=decode, frames=None,
        num_frames=K, num_new_frames=N, guidance_scale=9.0, resample_iters=R, slide="latent"))(
        key, context=ctx, uncond_context=uctx, latents=given, timesteps=ts)
    assert len(seen) == N * len(ts) * (R + 1)
    noise = keyed_noise(key, 0.0)
    abar = ref.ABAR
    tn = list(ts[1:]) + [0]
    worst, calls = 0.0, iter(seen)
    queues = [np.asarray(S.pad_queue(given, K - 1))]
    for i in range(N):
        queues.append(np.concatenate([queues[-1][:, 1:], np.asarray(lat)[:, i:i + 1]], axis=1))
    for i in range(N):
        s0 = queues[i]
        for j, t in enumerate(ts):
            for r in range(R + 1):
                x, tt = next(calls)
                assert (tt == t).all() and x.shape[0] == 2 * B
                for b in range(B):
                    if r == 0:
                        want = ref.q_sample(s0[b], t, noise(b, ("noisy", i, j), s0[b].shape))
                    else:
                        nn = ref.q_sample(s0[b], tn[j], noise(b, ("noisy_next", i, j), s0[b].shape))
                        zp = noise(b, ("push", i, j, r - 1), (K,) + s0[b].shape[1:])[:K - 1]
                        want = np.sqrt(abar[t] / abar[tn[j]]) * nn + np.sqrt(1 - abar[t] / abar[tn[j]]) * zp
                    for half in (b, B + b):  # the uncond and text halves see the same x
                        worst = max(worst, np.abs(x[half, :K - 1] - want).max())
                    if j == 0 and r == 0:  # DDPM inversion: the last frame is a noising of s0[-1]
                        z = noise(b, ("init", i), (K,) + s0[b].shape[1:])[K - 1]
                        worst = max(worst, np.abs(x[b, K - 1] - ref.q_sample(s0[b, -1], t, z)).max())
    print("queue frames vs noised queue (float32), max abs err:", worst)
    assert worst < 1e-4


@pytest.mark.slow
def test_ddpm_inversion_initial_frames():
    s0 = jax.random.normal(jax.random.key(0), (B, K - 1, 4, 4, 4))
    fk = batch_keys(1)
    x = S.initial_latent(fk, s0, 901, num_frames=K)
    a = S.alphas_cumprod()[901]
    z = (x - jnp.sqrt(a) * s0[:, -1:]) / jnp.sqrt(1 - a)  # the noise in each of the K frames
    want = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (K, 4, 4, 4)))(fk)
    np.testing.assert_allclose(z, want, atol=1e-4)
    zf = np.asarray(z).reshape(B, K, -1)
    for b in range(B):  # independent noise per frame: no two frames share it
        c = np.corrcoef(zf[b])
        assert np.abs(c - np.eye(K)).max() < 0.5
    x0 = S.initial_latent(fk, s0, 901, num_frames=K, ddpm_inversion=False)
    np.testing.assert_allclose(x0, want, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("slide", ["pixel", "latent"])
def test_shapes_batch_independence_and_bfloat16(slide):
    frames, ctx, uctx = inputs(1, jnp.float32)
    denoise, encode, decode = TOY.jax_fns()
    kw = dict(num_frames=K, num_new_frames=2, timesteps=S.ddim_timesteps(3), guidance_scale=9.0,
              resample_iters=1, slide=slide)
    key = batch_keys(0)
    lat, px = ti2v(key, denoise, encode, decode, frames, ctx, uctx, **kw)
    assert lat.shape == (B, 2, 4, 4, 4) and px.shape == (B, 2, HW, HW, 3)
    # One key per video: item 1 of the batch is the video its key gives alone (one key, batch 1).
    lat1, _ = ti2v(key[1], denoise, encode, decode, frames[1:], ctx[1:], uctx[1:], **kw)
    np.testing.assert_allclose(lat1[0], lat[1], atol=1e-6)
    with pytest.raises(ValueError, match=r"one key per video, e\.g\. jax\.random\.split\(key, 2\)"):
        ti2v(key[0], denoise, encode, decode, frames, ctx, uctx, **kw)  # one key for a batch of 2
    lat16, px16 = ti2v(key, denoise, encode, decode, frames.astype(jnp.bfloat16),
                                     ctx.astype(jnp.bfloat16), uctx.astype(jnp.bfloat16), **kw)
    assert lat16.dtype == jnp.float32 and px16.dtype == jnp.float32  # the state stays float32
    err = float(jnp.abs(lat16.astype(jnp.float32) - lat).max())
    print(f"{slide}: bfloat16 vs float32 latents max abs diff {err:.3f} (scale {float(jnp.abs(lat).max()):.2f})")
    assert np.isfinite(np.asarray(lat16, np.float32)).all() and err < 0.25 * float(jnp.abs(lat).max())
    if slide == "latent":
        lat_only, none = ti2v(key, denoise, encode, decode, frames, ctx, uctx,
                                            decode_output=False, **kw)
        assert none is None
        np.testing.assert_array_equal(lat_only, lat)


def test_jit_does_not_recompile():
    denoise, encode, decode = TOY.jax_fns()

    @jax.jit
    def run(key, frames, ctx, uctx, timesteps, g, eta):
        return S.ti2v_zero_sample(key, S.cfg_denoiser(denoise, ctx, uctx), encode, decode, frames, num_frames=K,
                                  num_new_frames=2, timesteps=timesteps, guidance=g, resample=1, eta=eta)

    for seed in range(3):
        frames, ctx, uctx = inputs(1, jnp.float32, seed=seed)
        run(batch_keys(seed), frames, ctx, uctx, S.ddim_timesteps(3), jnp.float32(7 + seed),
            jnp.float32(0.1 * seed))
    assert run._cache_size() == 1


@pytest.mark.slow
@pytest.mark.parametrize("slide", ["latent", "pixel"])
def test_grad_matches_finite_differences(x64, slide):
    """d(scalar of the new frames)/d(given latent or image), 2 steps, R = 1, through the slide."""
    frames, ctx, uctx = inputs(1, jnp.float64)
    denoise, encode, decode = TOY.jax_fns()
    w = jax.random.normal(jax.random.key(11), (B, 2, 4, 4, 4), jnp.float64)
    kw = dict(num_frames=K, num_new_frames=2, timesteps=S.ddim_timesteps(2), guidance_scale=9.0,
              resample_iters=1, eta=0.3, abar=S.alphas_cumprod(dtype=jnp.float64), slide=slide)
    x = encode(frames) if slide == "latent" else frames

    def f(x):
        given = dict(latents=x, frames=None) if slide == "latent" else dict(frames=x)
        lat, _ = ti2v(batch_keys(2), denoise, encode, decode, context=ctx,
                                    uncond_context=uctx, **given, **kw)
        return jnp.sum(w * lat)

    f = jax.jit(f)
    g = jax.grad(f)(x)
    assert float(jnp.abs(g).max()) > 1e-3
    h, worst = 1e-5, 0.0
    for s in range(3):
        v = jax.random.normal(jax.random.key(100 + s), x.shape, jnp.float64)
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        ad = jnp.sum(g * v)
        worst = max(worst, float(abs(fd - ad) / max(1.0, abs(ad))))
    print(f"{slide}: grad vs central differences, max rel err {worst:.2e}")
    assert worst < 1e-6


# --- plain T2V with a tiny real U-Net vs diffusers' TextToVideoSDPipeline ------------------

TINY_UNET = dict(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
                 up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], layers_per_block=1, norm_num_groups=8,
                 attention_head_dim=8, cross_attention_dim=16, in_channels=4, out_channels=4, sample_size=8)


@pytest.fixture(scope="module")
def tiny_unet():
    unet3d = pytest.importorskip("ti2v_jax.models.unet3d")
    helpers = pytest.importorskip("helpers")
    torch = pytest.importorskip("torch")
    from diffusers import UNet3DConditionModel
    from flax import nnx

    torch.manual_seed(0)
    tm = helpers.perturb_(UNet3DConditionModel(**TINY_UNET), scale=0.02, seed=1).eval()
    fm = helpers.flax_from_torch(lambda: unet3d.UNet3DConditionModel(TINY_UNET), tm,
                                 renames=unet3d.TORCH_RENAMES, ignore=unet3d.TORCH_IGNORE, component="unet")
    graphdef, state = nnx.split(fm)
    return tm, graphdef, state


@pytest.mark.slow
@pytest.mark.parametrize("steps,g", [(2, 9.0), (2, 1.0), (5, 9.0), (5, 1.0)])
def test_t2v_matches_diffusers_pipeline(tiny_unet, steps, g):
    import torch
    from diffusers import TextToVideoSDPipeline
    from flax import nnx

    tm, graphdef, state = tiny_unet
    pipe = TextToVideoSDPipeline(vae=None, text_encoder=None, tokenizer=None, unet=tm,
                                 scheduler=_diffusers_ddim())
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn((2, 4, 3, 8, 8), generator=gen)  # (B, C, F, h, w)
    ctx, uctx = torch.randn((2, 5, 16), generator=gen), torch.randn((2, 5, 16), generator=gen)
    with torch.no_grad():
        want = pipe(prompt_embeds=ctx, negative_prompt_embeds=uctx, latents=x_T, num_frames=3,
                    height=64, width=64, num_inference_steps=steps, guidance_scale=g,
                    output_type="latent").frames.numpy()

    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def run(state, x_T, ctx, uctx, timesteps):
        denoise = lambda x, t, c: nnx.merge(graphdef, state)(x, t, c)  # noqa: E731
        return t2v(batch_keys(0), denoise, x_T, ctx, uctx, timesteps=timesteps,
                            guidance_scale=g)

    to_ours = lambda a: jnp.asarray(a.numpy())  # noqa: E731
    got = run(state, jnp.moveaxis(to_ours(x_T), 1, -1), to_ours(ctx), to_ours(uctx), S.ddim_timesteps(steps))
    got = np.moveaxis(np.asarray(got), -1, 1)
    err = np.abs(got - want).max()
    print(f"t2v vs TextToVideoSDPipeline (S={steps}, g={g}): max abs err {err:.2e} (max |x| {np.abs(want).max():.2f})")
    assert err < 1e-4
