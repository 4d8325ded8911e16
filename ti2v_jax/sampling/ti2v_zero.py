"""TI2V-Zero sampling: repeat-and-slide with DDPM inversion and resampling (Ni et al., CVPR 2024).

See ALGORITHM.md. The network enters as pure functions:
  guided(x (B,K,h,w,C), t (B,) int32, g) -> eps, same shape and dtype as x: a denoiser with
    classifier-free guidance, built by `guidance.cfg_denoiser(denoise, context, uncond_context)`;
  encode(frames (B,F,H,W,3)) -> latents (B,F,h,w,C), already scaled by the VAE factor;
  decode(latents (B,F,h,w,C)) -> frames (B,F,H,W,3), float, unclamped.
Each sampler here is traceable: wrap it in `jax.jit` (binding the functions and the
static ints), and N new frames become one program: `lax.scan` over the new frames,
inside it `lax.scan` over the DDIM steps (timesteps are an array argument), inside
that `lax.scan` over the R+1 U-Net passes of a step (resampling passes, then the
final step; one U-Net call site in the whole program). Compile time does not grow
with N, S or R.

Per-step schedules. `guidance`, `eta` and `resample` are each a Python number, a scalar
array, an (S,) array (one value per DDIM step) or a (B, S) array (one row per item: a grid of them
is one batch). Arrays are traced: changing them does not recompile. Python numbers are
static fast paths: `eta == 0` draws no eta noise in the DDIM step, an int `resample`
runs exactly R resampling passes in every step. (Guidance 1 everywhere is the static
`guided=False` of `cfg_denoiser`.) With a `resample` array, `max_resample` (static)
bounds it: step j runs max_resample + 1 U-Net passes of which pass r < R_j is a
resampling pass, pass r = R_j the final DDIM step, and passes r > R_j leave x as it is
(a select keeps x: those passes are computed and discarded, so a schedule costs as much
as max_resample everywhere). With `skip_passes=True` a `lax.cond` instead skips the U-Net
when no item of the batch needs the pass (cheaper for schedules that resample in a few
steps only; the network then sits inside an XLA conditional, which the tests check for
the same maths but not for bit-equality on a real network). A resample array equal to R
everywhere gives the same numbers, bit for bit, as the int R (without skip_passes).

Precision. The state (initial latent, latent queue, decoded frames, q_sample, DDIM,
push-back, replacement) is kept in `schedule.state_dtype` of the inputs: float32 for
float32, bfloat16 or float16 inputs (float64 stays float64). The network functions are
given that state and must cast at their own boundary (`programs.ProgramSpec.fns` does:
inputs to each network's dtype, outputs back to float32).

Randomness. Each video has its own key k_b and draws all its noise from it alone:
`key` is the batch's keys, shape (B,), or one key for a batch of one video (see
`schedule.item_keys`; for more, split it: `jax.random.split(key, B)`). So item b equals
the video its key gives alone, in any batch or layout, under jax.vmap too, and the same
as the pipeline's `seed=s` where k_b = `jax.random.key(s)`. All noise is float32
`jax.random.normal`:
  new frame i (0-based):      k_i  = fold_in(k_b, i)
    initial latent:                  normal(fold_in(k_i, 0), (K,h,w,C))   [z_k of DDPM inversion, or x_T]
  DDIM step j (timesteps index): k_ij = fold_in(fold_in(k_i, 1), j)
    draw d of step j:                normal(fold_in(k_ij, d), (K,h,w,C)), with
      d = 0: z of noisy = q_sample(s0, t, z[:K-1])
      d = 1: z' of noisy_next = q_sample(s0, t_next, z'[:K-1])
      d = 2 + 2r: eta noise of the DDIM step in U-Net pass r = 0..R (r = R: the final step)
      d = 3 + 2r: push-back noise z'' after pass r < R
    (all drawn even when unused, e.g. eta = 0, so no draw depends on another's use; with a
    resample schedule, step j's final pass R_j takes draw 2 + 2 R_j, as an int R_j would).
The replacing baseline and plain T2V use the same step draws with k_b in place of k_i.

Gradients. `remat=True` makes `jax.grad` through a whole video fit: each U-Net call is
`jax.checkpoint`ed with `nothing_saveable` (only its inputs are kept; its activations are
recomputed in the backward pass) and the bodies of the frame and step scans are
checkpointed (only their carries are kept: the queue per frame, the latent per step; a
step is recomputed when it is differentiated). The pass body is not: its residuals are a
few latent-sized arrays, alive only while one step is differentiated. Memory then grows
with N, S and R by latent-sized arrays instead of U-Net activations, for about two extra
U-Net forward passes per pass in the backward. Off by default (inference needs none of it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ti2v_jax.settings import SamplerSettings

from .guidance import _per_item
from .schedule import (alphas_cumprod, ddim_step, fold, item_keys, next_timesteps, normal, push_back,
                       q_sample, state_dtype, step_draws, step_key)

# Defaults of the keyword arguments: the settings' own (SamplerSettings, the one place they are set).
_DEFAULTS = SamplerSettings()


def _is_static(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _rows(v, b, s, dtype):
    """A per-step setting given as an array () , (S,) or (B, S) -> (S, B), the steps' scan axis first."""
    v = jnp.asarray(v, dtype)
    if v.ndim == 0:
        return jnp.broadcast_to(v, (s, b))
    if v.ndim not in (1, 2) or v.shape[-1] != s or (v.ndim == 2 and v.shape[0] not in (1, b)):
        raise ValueError(f"a per-step setting must be a number, ({s},) or ({b}, {s}); got shape {v.shape}")
    return jnp.broadcast_to(v.reshape((-1, s)), (b, s)).T


def _max_resample(resample, max_resample):
    if _is_static(resample):
        return int(resample)
    if max_resample is None:
        try:
            return int(np.max(np.asarray(resample)))
        except jax.errors.TracerArrayConversionError:
            raise ValueError("a traced resample schedule needs the static max_resample (its largest value)") \
                from None
    return int(max_resample)


def _maybe_remat(fn, remat):
    return jax.checkpoint(fn, prevent_cse=False) if remat else fn


def _unet(guided, remat):
    """The guided denoiser, with its activations rematerialised when `remat`."""
    if not remat:
        return guided
    return jax.checkpoint(guided, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)


def pad_queue(given, length: int):
    """Queue of `length` frames from M <= length given ones: repeat the first at the front."""
    m = given.shape[1]
    if m > length:
        raise ValueError(f"got {m} given frames, the queue holds {length} (num_frames - 1)")
    if m == 0:
        raise ValueError("need at least one given frame")
    first = jnp.repeat(given[:, :1], length - m, axis=1)
    return jnp.concatenate([first, given], axis=1)


def initial_latent(frame_keys, s0, t0, *, num_frames, ddpm_inversion=_DEFAULTS.inversion, abar=None,
                   noise=None):
    """The K-frame starting latent: with DDPM inversion, each frame its own noising
    q_sample(s0[last], t0, z_k) of the last queue latent; without, N(0, I). In s0's dtype.
    noise: the z (B,K,h,w,C) to use instead of the keyed draw (e.g. to optimise it)."""
    abar = alphas_cumprod() if abar is None else abar
    z = (normal(fold(frame_keys, 0), (num_frames,) + s0.shape[2:], s0.dtype) if noise is None
         else noise.astype(s0.dtype))
    return q_sample(s0[:, -1:], t0, z, abar) if ddpm_inversion else z


def ti2v_zero_frame(frame_keys, guided, s0, *, num_frames, timesteps, guidance=_DEFAULTS.guidance,
                    resample=_DEFAULTS.resample, max_resample=None, eta=_DEFAULTS.eta,
                    ddpm_inversion=_DEFAULTS.inversion, abar=None, remat=False, init_noise=None,
                    skip_passes=False):
    """One new frame latent (B,h,w,C) from the queue s0 (B,K-1,h,w,C) of clean latents.

    guided: the guided denoiser (`cfg_denoiser`); guidance/eta/resample: per-step settings
    (see the module docstring); the state is kept in `state_dtype(s0.dtype)`; init_noise:
    the initial latent's noise (B,K,h,w,C) instead of the keyed draw.
    """
    k = num_frames
    if s0.shape[1] != k - 1:
        raise ValueError(f"queue has {s0.shape[1]} frames, expected num_frames - 1 = {k - 1}")
    s0 = s0.astype(state_dtype(s0.dtype))
    b = s0.shape[0]
    abar = alphas_cumprod() if abar is None else abar
    timesteps = jnp.asarray(timesteps, jnp.int32)
    n_steps = timesteps.shape[0]
    t_next = next_timesteps(timesteps)
    r_max = _max_resample(resample, max_resample)
    # The traced per-step settings, scanned over with the steps; Python numbers stay static.
    sched = {name: _rows(v, b, n_steps, dt) for name, v, dt in (
        ("g", guidance, jnp.float32), ("eta", eta, jnp.float32), ("r", resample, jnp.int32))
        if not _is_static(v)}
    unet = _unet(guided, remat)
    x = initial_latent(frame_keys, s0, timesteps[0], num_frames=k, ddpm_inversion=ddpm_inversion,
                       abar=abar, noise=init_noise)

    def step(x, inp):
        t, tn, j, row = inp
        g = row.get("g", guidance)
        eta_j = _per_item(row["eta"], b, x.ndim, x.dtype) if "eta" in row else eta
        r_j = row.get("r")  # (B,) or None for a static R
        z = step_draws(step_key(frame_keys, j), 2 * r_max + 4, x.shape[1:], x.dtype)
        noisy = q_sample(s0, t, z[:, 0, :k - 1], abar)
        noisy_next = q_sample(s0, tn, z[:, 1, :k - 1], abar)
        x = x.at[:, :k - 1].set(noisy)

        def run_pass(x, r):
            eps = unet(x, t, g)
            x = ddim_step(x, eps, t, tn, abar, eta_j, z[:, 2 + 2 * r])
            if r_max == 0:
                return x
            y = x.at[:, :k - 1].set(noisy_next)
            y = push_back(y, t, tn, abar, z[:, 3 + 2 * r])
            resampling = r < (r_max if r_j is None else _per_item(r_j, b, x.ndim, jnp.int32))
            return jnp.where(resampling, y, x)  # pass R_j is the final DDIM step

        def unet_pass(x, r):
            if r_j is None:
                return run_pass(x, r), None
            active = r <= r_j  # (B,): passes beyond R_j leave x as it is
            y = lax.cond(jnp.any(active), run_pass, lambda x, r: x, x, r) if skip_passes else run_pass(x, r)
            return jnp.where(_per_item(active, b, x.ndim, bool), y, x), None

        x, _ = lax.scan(unet_pass, x, jnp.arange(r_max + 1))
        return x, None

    x, _ = lax.scan(_maybe_remat(step, remat), x, (timesteps, t_next, jnp.arange(n_steps), sched))
    return x[:, k - 1]


def slide_frame(frame_keys, guided, encode, decode, queue, *, slide="pixel", **frame_kw):
    """One repeat-and-slide step: a new frame from the latent queue (B,K-1,h,w,C), then the queue slid.

    slide="pixel": the new latent is decoded, and the decoded frame (unclamped, in the
    state dtype) encoded and appended. The VAE encodes frames one by one (ALGORITHM.md),
    so this is the queue the published code gets by re-encoding all K-1 pixel frames
    before each new frame, at one encode per frame instead of K-1.
    slide="latent": the new latent itself is appended.
    frame_kw: ti2v_zero_frame's keyword arguments. Returns (queue, (latent, frame)) for
    "pixel" and (queue, latent) for "latent".
    """
    queue = queue.astype(state_dtype(queue.dtype))
    x = ti2v_zero_frame(frame_keys, guided, queue, **frame_kw)
    if slide == "pixel":
        px = decode(x[:, None]).astype(x.dtype)
        return jnp.concatenate([queue[:, 1:], encode(px).astype(queue.dtype)], axis=1), (x, px[:, 0])
    return jnp.concatenate([queue[:, 1:], x[:, None]], axis=1), x


def ti2v_zero_sample(key, guided, encode, decode, frames=None, *, num_frames, num_new_frames, timesteps,
                     guidance=_DEFAULTS.guidance, resample=_DEFAULTS.resample, max_resample=None,
                     eta=_DEFAULTS.eta, ddpm_inversion=_DEFAULTS.inversion,
                     slide=_DEFAULTS.slide, abar=None, latents=None, decode_output=True, on_frame=None, remat=False,
                     init_noise=None, skip_passes=False):
    """TI2V-Zero (Ni et al., CVPR 2024): N new frames after M given ones, repeat-and-slide.

    key: one key per video, shape (B,), or one key for B = 1 (module docstring, Randomness).
    guided: the guided denoiser, `guidance.cfg_denoiser(denoise, context, uncond_context)`.
    frames: (B, M, H, W, 3) given frames in [-1, 1], M <= K-1 (video prediction; M=1
      is image-to-video), padded to K-1 by repeating the first at the front.
    latents: instead of `frames`, (B, M, h, w, C) given latents (slide="latent" only).
    guidance, resample, eta, max_resample, skip_passes: per-step settings (module docstring).
    slide: "pixel" = the published algorithm (decode each new latent, keep the decoder's
      float output in a pixel queue, re-encode all K-1 queue frames before each new
      frame; computed with one encode per frame, see `slide_frame`); "latent" = slide
      the latents themselves (no per-frame VAE calls; a different, cheaper algorithm).
    on_frame: optional `on_frame(i, out)`, called while tracing inside the frame loop with
      the traced frame index i and the frame's outputs, e.g. to report progress through
      `jax.debug.callback` (as `programs` does).
    remat: rematerialise for gradients (module docstring).
    init_noise: (B, N, K, h, w, C), the initial latents' noise of the N new frames instead of
      the keyed draws (e.g. to differentiate with respect to it).
    Returns (new_latents (B,N,h,w,C), new_frames (B,N,H,W,3)) in the state dtype; in latent
    mode the frames come from one batched decode at the end, or are None if `decode_output`
    is False.
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
    dtype = state_dtype(given.dtype)
    keys = item_keys(key, given.shape[0])
    # The latent queue: the M given frames encoded once each (the VAE works frame by frame,
    # see slide_frame), then padded.
    queue = latents if latents is not None else encode(frames.astype(dtype))
    queue = pad_queue(queue.astype(dtype), k - 1)
    frame_kw = dict(num_frames=k, timesteps=timesteps, guidance=guidance, resample=resample,
                    max_resample=max_resample, eta=eta, ddpm_inversion=ddpm_inversion, abar=abar, remat=remat,
                    skip_passes=skip_passes)

    def new_frame(queue, inp):
        i, noise = inp
        queue, out = slide_frame(fold(keys, i), guided, encode, decode, queue, slide=slide, init_noise=noise,
                                 **frame_kw)
        if on_frame is not None:
            on_frame(i, out)
        return queue, out

    noises = None if init_noise is None else jnp.moveaxis(init_noise, 1, 0)
    _, out = lax.scan(_maybe_remat(new_frame, remat), queue, (jnp.arange(num_new_frames), noises))
    out = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), out)
    if slide == "pixel":
        return out
    return out, (decode(out).astype(dtype) if decode_output else None)


def replacing_baseline_sample(key, guided, image_latent, *, num_frames, timesteps, guidance=_DEFAULTS.guidance,
                              eta=_DEFAULTS.eta,
                              abar=None, on_step=None, remat=False):
    """Replacing-based baseline (TI2V-Zero's ablation, row 1): K frames from N(0, I),
    frame 0 replaced by q_sample(image_latent, t) before every step. Returns (B,K,h,w,C)
    in the state dtype. guidance/eta: per-step settings as in `ti2v_zero_sample`;
    on_step(j, x): called while tracing after each DDIM step."""
    k = num_frames
    abar = alphas_cumprod() if abar is None else abar
    image_latent = image_latent.astype(state_dtype(image_latent.dtype))
    b = image_latent.shape[0]
    keys = item_keys(key, b)
    timesteps = jnp.asarray(timesteps, jnp.int32)
    n_steps = timesteps.shape[0]
    lat = image_latent.shape[1:]
    sched = {name: _rows(v, b, n_steps, jnp.float32) for name, v in (("g", guidance), ("eta", eta))
             if not _is_static(v)}
    unet = _unet(guided, remat)
    x = normal(fold(keys, 0), (k,) + lat, image_latent.dtype)

    def step(x, inp):
        t, tn, j, row = inp
        eta_j = _per_item(row["eta"], b, x.ndim, x.dtype) if "eta" in row else eta
        z = step_draws(step_key(keys, j), 3, x.shape[1:], x.dtype)
        x = x.at[:, 0].set(q_sample(image_latent, t, z[:, 0, 0], abar))
        eps = unet(x, t, row.get("g", guidance))
        x = ddim_step(x, eps, t, tn, abar, eta_j, z[:, 2])
        if on_step is not None:
            on_step(j, x)
        return x, None

    x, _ = lax.scan(_maybe_remat(step, remat), x,
                    (timesteps, next_timesteps(timesteps), jnp.arange(n_steps), sched))
    return x
