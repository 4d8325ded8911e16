"""The compiled programs behind the pipeline, and what they need from a checkpoint.

Weights enter the programs as arguments; `ProgramSpec` holds the pure network functions,
their dtypes and the static settings. Every positional array of a program is batched
(leading axis B; one row per item), static settings come as keyword arguments bound by
functools.partial (`parallel` keys its compiled programs on them):

    ti2v_program(spec, p, keys (B,), frames (B,M,H,W,3) float32 in [-1,1], ctx (B,77,D),
                 uncond (B,77,D), timesteps (B,S) int32 (equal rows), guidance (B,S) float32,
                 eta (B,S) float32, resample (B,S) int32, ticket (B,) int32,
                 *, num_new_frames, max_resample, guided, stochastic, inversion, slide, baseline,
                 remat=False, skip_passes=False) -> (latents, frames) float32
        TI2V: the N new latents (B,N,h,w,C) and frames (B,N,H,W,3), unclamped; baseline: the
        K-1 frames after the first (latents and decoded frames).
    t2v_program(spec, p, keys, ctx, uncond, timesteps, guidance, eta, ticket,
                *, latent_shape, guided, stochastic) -> (latents (B,F,h,w,C), frames (B,F,H,W,3))

The per-step settings are traced rows, so items with different schedules share one batch
(a grid of guidance x resample schedules for one image is one call) and changing their
values recompiles only where one of three static facts changes: `guided=False` (guidance 1 everywhere) skips the empty-text half;
`stochastic=False` (eta 0 everywhere) draws no eta noise; `max_resample` bounds the
resample rows (0: no resampling code at all); passes beyond an item's R_j are computed and
discarded, unless `skip_passes=True` skips them when no item needs them (cheaper; see
sampling/ti2v_zero.py). See `SamplerSettings.static_key`.

Precision policy (one place): everything between network calls is float32 (the sampler
state, both queues, q_sample, DDIM, push-back, replacement); each network gets its inputs
cast to its own compute dtype at the call boundary and returns float32 (`ProgramSpec.fns`).

Progress (static `report=True`, the default): `with progress(callback) as ticket:` registers `callback(done, total)` for the
duration of a call and yields an int ticket, which the caller puts in the `ticket` array
(one value for every item). The programs call one fixed host function (`_report`, through
`jax.debug.callback`) after each new frame (TI2V) or DDIM step (T2V, baseline); it
dispatches to the registered callback, each `done` once (several devices may report the
same frame) and in increasing order. Ticket 0 reports to nobody. The callback runs on a
runtime thread: keep it short (e.g. a progress bar's update).
"""

from __future__ import annotations

import contextlib
import itertools
import threading

import jax
import jax.numpy as jnp
import numpy as np

from ti2v_jax.sampling import schedule
from ti2v_jax.sampling.guidance import cfg_denoiser, shares_samples
from ti2v_jax.sampling.t2v import t2v_sample
from ti2v_jax.sampling.ti2v_zero import replacing_baseline_sample, ti2v_zero_sample

NETWORKS = ("unet", "vae", "text_encoder")


# ------------------------------------------------------------------ progress

_lock = threading.Lock()
_callbacks: dict = {}  # ticket -> [callback, last done reported]
_tickets = itertools.count(1)


@contextlib.contextmanager
def progress(callback):
    """Register `callback(done, total)` for one call; yields the int ticket for the program's
    `ticket` argument. `done` counts new frames (TI2V) or DDIM steps (T2V, baseline)."""
    with _lock:
        ticket = next(_tickets)
        _callbacks[ticket] = [callback, 0]
    try:
        yield ticket
    finally:
        with _lock:
            _callbacks.pop(ticket, None)


def _report(ticket, done, total, _after):
    """The one host function the programs call (so a new callback never recompiles them)."""
    ticket, done = int(np.asarray(ticket)), int(np.asarray(done))
    with _lock:
        entry = _callbacks.get(ticket)
        if entry is None or done <= entry[1]:
            return
        entry[1] = done
        callback = entry[0]
    callback(done, int(np.asarray(total)))


def _reporter(ticket, total, report=True):
    """on_frame/on_step hook: report `i + 1` of `total` once `out` is computed. None where
    `report` is False: a program without the host callback (which cannot be serialised:
    `executables` saves such programs, and the pipeline then reports once per call)."""
    if not report:
        return None

    def hook(i, out):
        # One element of the output rides along so the report waits for it.
        after = jax.tree.leaves(out)[0].reshape(-1)[:1]
        jax.debug.callback(_report, ticket[0], i + 1, jnp.int32(total), after)
    return hook


# ------------------------------------------------------------------ networks

def component_dtypes(components) -> dict:
    """{"unet": dtype, "vae": dtype, "text_encoder": dtype}: the compute dtype each network was
    loaded with (`Components.dtypes`; float32 for a network not loaded)."""
    return {n: jnp.dtype(components.dtypes.get(n, jnp.float32)) for n in NETWORKS}


class ProgramSpec:
    """What a compiled program needs from a pipeline, without its weights: the pure network
    functions, their dtypes, K and the noise schedule.

    Weights enter the programs as arguments. A spec is hashable, and specs of equal networks
    (graphs, so configs and kernels), dtypes, K and schedules are equal, so a compiled
    program is keyed on what it computes, not on which pipeline asked (an unhashable graph
    falls back to identity: no sharing, still correct).
    """

    def __init__(self, components, num_frames, abar):
        self.unet_apply, self.vae_encode, self.vae_decode = (components.unet_apply, components.vae_encode,
                                                             components.vae_decode)
        self.num_frames, self.abar = int(num_frames), abar
        self.dtypes = component_dtypes(components)
        self.graphdefs = {n: getattr(components, n)[0] for n in ("unet", "vae")}
        key = (self.graphdefs["unet"], self.graphdefs["vae"], components.configs["vae"].get("scaling_factor"),
               self.num_frames, tuple(self.dtypes[n].name for n in NETWORKS), np.asarray(abar).tobytes())
        try:
            hash(key)
        except TypeError:
            key = id(self)
        self._key = key

    def __eq__(self, other):
        return isinstance(other, ProgramSpec) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def fns(self, p):
        """(denoise, encode, decode) on the weights `p`, casting at the call boundary: inputs to
        the network's dtype, outputs to the sampler's state dtype (float32; float64 stays)."""
        ud, vd = self.dtypes["unet"], self.dtypes["vae"]

        def denoise(x, t, ctx):
            return self.unet_apply(p["unet"], x.astype(ud), t, ctx.astype(ud)).astype(schedule.state_dtype(x.dtype))

        def encode(f):
            return self.vae_encode(p["vae"], f.astype(vd)).astype(schedule.state_dtype(f.dtype))

        def decode(z):
            return self.vae_decode(p["vae"], z.astype(vd)).astype(schedule.state_dtype(z.dtype))

        return shares_samples(denoise), encode, decode


# ------------------------------------------------------------------ the programs

def ti2v_static(items) -> dict:
    """`ti2v_program`'s static settings for a batch of `SamplerSettings` (equal `static_key`s)."""
    s = items[0]
    return dict(num_new_frames=s.num_new_frames, max_resample=s.max_resample,
                guided=any(it.guided for it in items), stochastic=any(it.stochastic for it in items),
                inversion=s.inversion, slide=s.slide, baseline=s.baseline)


def t2v_static(items, num_frames: int, vae_scale: int, latent_channels: int) -> dict:
    """`t2v_program`'s static settings for a batch of `SamplerSettings` making `num_frames` frames."""
    s = items[0]
    return dict(latent_shape=(int(num_frames), s.height // vae_scale, s.width // vae_scale, latent_channels),
                guided=any(it.guided for it in items), stochastic=any(it.stochastic for it in items))


def ti2v_program(spec, p, keys, frames, ctx, uncond, timesteps, guidance, eta, resample, ticket, *,
                 num_new_frames, max_resample, guided, stochastic, inversion, slide, baseline, remat=False,
                 skip_passes=False, report=True):
    """TI2V-Zero (or the replacing baseline) on a batch; see the module docstring."""
    denoise, encode, decode = spec.fns(p)
    guided_fn = cfg_denoiser(denoise, ctx, uncond, guided=guided)
    ts = timesteps[0]  # the same for every item
    g = guidance if guided else 1.0
    e = eta if stochastic else 0.0
    frames = frames.astype(jnp.float32)
    if baseline:
        lat = encode(frames[:, -1:])[:, 0]
        x = replacing_baseline_sample(keys, guided_fn, lat, num_frames=spec.num_frames, timesteps=ts,
                                      guidance=g, eta=e, abar=spec.abar, remat=remat,
                                      on_step=_reporter(ticket, ts.shape[0], report))
        return x[:, 1:], decode(x)[:, 1:]
    r = resample if max_resample > 0 else 0
    return ti2v_zero_sample(keys, guided_fn, encode, decode, frames, num_frames=spec.num_frames,
                            num_new_frames=num_new_frames, timesteps=ts, guidance=g, resample=r,
                            max_resample=max_resample, eta=e, ddpm_inversion=inversion, slide=slide,
                            abar=spec.abar, remat=remat, skip_passes=skip_passes,
                            on_frame=_reporter(ticket, num_new_frames, report))


def t2v_program(spec, p, keys, ctx, uncond, timesteps, guidance, eta, ticket, *, latent_shape, guided,
                stochastic, report=True):
    """Plain text-to-video DDIM on a batch; see the module docstring."""
    denoise, _, decode = spec.fns(p)
    guided_fn = cfg_denoiser(denoise, ctx, uncond, guided=guided)
    ts = timesteps[0]
    x_t = schedule.normal(schedule.fold(keys, 0), latent_shape, jnp.float32)
    x = t2v_sample(keys, guided_fn, x_t, timesteps=ts, guidance=guidance if guided else 1.0,
                   eta=eta if stochastic else 0.0, abar=spec.abar, on_step=_reporter(ticket, ts.shape[0], report))
    return x, decode(x)
