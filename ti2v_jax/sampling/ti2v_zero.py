"""TI2V-Zero sampling: repeat-and-slide with DDPM inversion and resampling (Ni et al., CVPR 2024).

See ALGORITHM.md. The network enters as pure functions:
  denoise(x (B,K,h,w,C), t (B,) int32, context (B,T,D)) -> eps, same shape as x
    (or, marked with `schedule.shares_samples`, n contexts per sample: see guided_eps);
  encode(frames (B,F,H,W,3)) -> latents (B,F,h,w,C), already scaled by the VAE factor;
  decode(latents (B,F,h,w,C)) -> frames (B,F,H,W,3), float, unclamped.
Each sampler here is traceable: wrap it in `jax.jit` (binding the functions and the
static ints), and N new frames become one program: `lax.scan` over the new frames,
inside it `lax.scan` over the DDIM steps (timesteps are an array argument), inside
that `lax.scan` over the R+1 U-Net passes of a step (R resampling passes, then the
final step; one U-Net call site in the whole program). Compile time does not grow
with N, S or R.

Static at trace time: num_frames K, num_new_frames N, resample_iters R, slide,
ddpm_inversion, and `guidance_scale`/`eta` only when given as Python numbers
(`guidance_scale == 1` then skips the unconditional half; `eta == 0` skips the eta
noise). Pass them as arrays to vary them without recompiling.

Randomness. `key` is one key, or per-item keys of shape (B,) (see
`schedule.item_keys`; a single key gives item b the key k_b = fold_in(key, b)).
All noise is float32 `jax.random.normal` (cast to the latent dtype) and item b's
noise comes from k_b alone, so it does not depend on the batch size or layout:
  new frame i (0-based):      k_i  = fold_in(k_b, i)
    initial latent:                  normal(fold_in(k_i, 0), (K,h,w,C))   [z_k of DDPM inversion, or x_T]
  DDIM step j (timesteps index): k_ij = fold_in(fold_in(k_i, 1), j)
    draw d of step j:                normal(fold_in(k_ij, d), (K,h,w,C)), with
      d = 0: z of noisy = q_sample(s0, t, z[:K-1])
      d = 1: z' of noisy_next = q_sample(s0, t_next, z'[:K-1])
      d = 2 + 2r: eta noise of the DDIM step in U-Net pass r = 0..R (r = R: the final step)
      d = 3 + 2r: push-back noise z'' after pass r < R
    (all drawn even when unused, e.g. eta = 0, so no draw depends on another's use).
The replacing baseline and plain T2V use the same step draws with k_b in place of k_i.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .schedule import (alphas_cumprod, ddim_step, fold, guided_eps, item_keys, next_timesteps,
                       normal, push_back, q_sample, step_draws, step_key)


def pad_queue(given, length: int):
    """Queue of `length` frames from M <= length given ones: repeat the first at the front."""
    m = given.shape[1]
    if m > length:
        raise ValueError(f"got {m} given frames, the queue holds {length} (num_frames - 1)")
    if m == 0:
        raise ValueError("need at least one given frame")
    first = jnp.repeat(given[:, :1], length - m, axis=1)
    return jnp.concatenate([first, given], axis=1)


def initial_latent(frame_keys, s0, t0, *, num_frames, ddpm_inversion=True, abar=None):
    """The K-frame starting latent: with DDPM inversion, each frame its own noising
    q_sample(s0[last], t0, z_k) of the last queue latent; without, N(0, I)."""
    abar = alphas_cumprod() if abar is None else abar
    z = normal(fold(frame_keys, 0), (num_frames,) + s0.shape[2:], s0.dtype)
    return q_sample(s0[:, -1:], t0, z, abar) if ddpm_inversion else z


def ti2v_zero_frame(frame_keys, denoise, s0, context, uncond_context, *, num_frames, timesteps,
                    guidance_scale=9.0, resample_iters=4, eta=0.0, ddpm_inversion=True, abar=None):
    """One new frame latent (B,h,w,C) from the queue s0 (B,K-1,h,w,C) of clean latents."""
    k, r_iters = num_frames, resample_iters
    if s0.shape[1] != k - 1:
        raise ValueError(f"queue has {s0.shape[1]} frames, expected num_frames - 1 = {k - 1}")
    abar = alphas_cumprod() if abar is None else abar
    timesteps = jnp.asarray(timesteps, jnp.int32)
    t_next = next_timesteps(timesteps)
    x = initial_latent(frame_keys, s0, timesteps[0], num_frames=k, ddpm_inversion=ddpm_inversion,
                       abar=abar)

    def step(x, inp):
        t, tn, j = inp
        z = step_draws(step_key(frame_keys, j), 2 * r_iters + 4, x.shape[1:], x.dtype)
        noisy = q_sample(s0, t, z[:, 0, :k - 1], abar)
        noisy_next = q_sample(s0, tn, z[:, 1, :k - 1], abar)
        x = x.at[:, :k - 1].set(noisy)

        def unet_pass(x, r):
            eps = guided_eps(denoise, x, t, context, uncond_context, guidance_scale)
            x = ddim_step(x, eps, t, tn, abar, eta, z[:, 2 + 2 * r])
            if r_iters == 0:
                return x, None
            y = x.at[:, :k - 1].set(noisy_next)
            y = push_back(y, t, tn, abar, z[:, 3 + 2 * r])
            return jnp.where(r < r_iters, y, x), None  # pass R is the final DDIM step

        x, _ = lax.scan(unet_pass, x, jnp.arange(r_iters + 1))
        return x, None

    x, _ = lax.scan(step, x, (timesteps, t_next, jnp.arange(timesteps.shape[0])))
    return x[:, k - 1]


def slide_frame(frame_keys, denoise, encode, decode, queue, context, uncond_context, *, slide="pixel",
                pixel_dtype=jnp.float32, **frame_kw):
    """One repeat-and-slide step: a new frame from the latent queue (B,K-1,h,w,C), then the queue slid.

    slide="pixel": the new latent is decoded, and the decoded frame (as `pixel_dtype`,
    unclamped) encoded and appended. The VAE encodes frames one by one (ALGORITHM.md),
    so this is the queue the published code gets by re-encoding all K-1 pixel frames
    before each new frame, at one encode per frame instead of K-1.
    slide="latent": the new latent itself is appended.
    frame_kw: ti2v_zero_frame's keyword arguments. Returns (queue, (latent, frame)) for
    "pixel" and (queue, latent) for "latent".
    """
    x = ti2v_zero_frame(frame_keys, denoise, queue, context, uncond_context, **frame_kw)
    if slide == "pixel":
        px = decode(x[:, None]).astype(pixel_dtype)
        return jnp.concatenate([queue[:, 1:], encode(px).astype(queue.dtype)], axis=1), (x, px[:, 0])
    return jnp.concatenate([queue[:, 1:], x[:, None].astype(queue.dtype)], axis=1), x


def ti2v_zero_sample(key, denoise, encode, decode, frames, context, uncond_context, *,
                     num_frames, num_new_frames, timesteps, guidance_scale=9.0, resample_iters=4,
                     eta=0.0, ddpm_inversion=True, slide="pixel", abar=None, latents=None,
                     decode_output=True, on_frame=None):
    """TI2V-Zero (Ni et al., CVPR 2024): N new frames after M given ones, repeat-and-slide.

    frames: (B, M, H, W, 3) given frames in [-1, 1], M <= K-1 (video prediction; M=1
      is image-to-video), padded to K-1 by repeating the first at the front.
    latents: instead of `frames`, (B, M, h, w, C) given latents (slide="latent" only).
    slide: "pixel" = the published algorithm (decode each new latent, keep the decoder's
      float output in a pixel queue, re-encode all K-1 queue frames before each new
      frame; computed with one encode per frame, see `slide_frame`); "latent" = slide
      the latents themselves (no per-frame VAE calls; a different, cheaper algorithm).
    on_frame: optional host function called as `on_frame(i)` (through
      `jax.debug.callback`) when new frame i is done, e.g. to drive a progress bar;
      it must be the same object across calls to avoid recompiling.
    Returns (new_latents (B,N,h,w,C), new_frames (B,N,H,W,3)); in latent mode the frames
    come from one batched decode at the end, or are None if `decode_output` is False.
    """
    if slide not in ("pixel", "latent"):
        raise ValueError(f"slide must be 'pixel' or 'latent', got {slide!r}")
    if (frames is None) == (latents is None):
        raise ValueError("give exactly one of frames and latents")
    if slide == "pixel" and frames is None:
        raise ValueError("slide='pixel' keeps a pixel queue: give frames, not latents")
    k = num_frames
    if k < 2:
        raise ValueError(f"num_frames must be >= 2, got {k}")
    given = frames if frames is not None else latents
    keys = item_keys(key, given.shape[0])
    # The latent queue: the M given frames encoded once each (the VAE works frame by frame,
    # see slide_frame), then padded.
    queue = pad_queue(latents if latents is not None else encode(frames), k - 1)

    def new_frame(queue, i):
        return slide_frame(fold(keys, i), denoise, encode, decode, queue, context, uncond_context, slide=slide,
                           pixel_dtype=given.dtype, num_frames=k, timesteps=timesteps,
                           guidance_scale=guidance_scale, resample_iters=resample_iters, eta=eta,
                           ddpm_inversion=ddpm_inversion, abar=abar)

    if on_frame is not None:
        sample_one = new_frame

        def new_frame(queue, i):
            queue, out = sample_one(queue, i)
            # One element of the new frame rides along so the tick waits for the frame.
            jax.debug.callback(lambda i, _: on_frame(i), i, jax.tree.leaves(out)[0].reshape(-1)[:1])
            return queue, out

    _, out = lax.scan(new_frame, queue, jnp.arange(num_new_frames))
    out = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), out)
    if slide == "pixel":
        return out
    return out, (decode(out) if decode_output else None)


def replacing_baseline_sample(key, denoise, image_latent, context, uncond_context, *, num_frames,
                              timesteps, guidance_scale=9.0, eta=0.0, abar=None):
    """Replacing-based baseline (TI2V-Zero's ablation, row 1): K frames from N(0, I),
    frame 0 replaced by q_sample(image_latent, t) before every step. Returns (B,K,h,w,C)."""
    k = num_frames
    abar = alphas_cumprod() if abar is None else abar
    keys = item_keys(key, image_latent.shape[0])
    timesteps = jnp.asarray(timesteps, jnp.int32)
    lat = image_latent.shape[1:]
    x = normal(fold(keys, 0), (k,) + lat, image_latent.dtype)

    def step(x, inp):
        t, tn, j = inp
        z = step_draws(step_key(keys, j), 3, x.shape[1:], x.dtype)
        x = x.at[:, 0].set(q_sample(image_latent, t, z[:, 0, 0], abar))
        eps = guided_eps(denoise, x, t, context, uncond_context, guidance_scale)
        return ddim_step(x, eps, t, tn, abar, eta, z[:, 2]), None

    x, _ = lax.scan(step, x, (timesteps, next_timesteps(timesteps), jnp.arange(timesteps.shape[0])))
    return x
