"""The compiled programs behind the pipeline, and what they need from a checkpoint.

Weights enter the programs as arguments; `ProgramSpec` holds the pure network
functions and the static settings. Static sampler settings come as keyword arguments
bound by functools.partial; `parallel` keys its compiled programs on them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ti2v_jax.sampling import schedule
from ti2v_jax.sampling.t2v import t2v_sample
from ti2v_jax.sampling.ti2v_zero import replacing_baseline_sample, ti2v_zero_sample

# The progress bar of the generation in flight. The compiled program calls `_tick`, one
# fixed function, so showing progress never changes (or recompiles) the program.
_PROGRESS: dict = {"bar": None}


def _tick(i):
    bar = _PROGRESS["bar"]
    if bar is not None and int(i) + 1 > bar.n:  # several devices may report the same frame
        bar.update(int(i) + 1 - bar.n)


class ProgramSpec:
    """What a compiled program needs from a pipeline, without its weights.

    Weights enter the programs as arguments; this holds the pure network functions
    and the static settings. Pipelines with equal networks and settings share one
    spec (see `get`), hence one set of compiled programs.
    """

    _cache: dict = {}

    def __init__(self, components, num_frames, dtype, abar):
        self.unet_apply, self.vae_encode, self.vae_decode = (components.unet_apply, components.vae_encode,
                                                             components.vae_decode)
        self.num_frames, self.dtype, self.abar = num_frames, dtype, abar

    @classmethod
    def get(cls, components, num_frames, dtype, abar):
        key = (components.unet[0], components.vae[0], components.configs["vae"].get("scaling_factor"),
               num_frames, jnp.dtype(dtype).name, np.asarray(abar).tobytes())
        try:
            hash(key)
        except TypeError:  # an unhashable graph: no sharing, still correct
            return cls(components, num_frames, dtype, abar)
        if key not in cls._cache:
            cls._cache[key] = cls(components, num_frames, dtype, abar)
        return cls._cache[key]

    def fns(self, p):
        denoise = schedule.shares_samples(lambda x, t, ctx: self.unet_apply(p["unet"], x, t, ctx))
        encode = lambda f: self.vae_encode(p["vae"], f.astype(self.dtype))  # noqa: E731
        decode = lambda z: self.vae_decode(p["vae"], z.astype(self.dtype)).astype(jnp.float32)  # noqa: E731
        return denoise, encode, decode


# The compiled programs. Static settings come as keyword arguments bound by functools.partial.

def ti2v_program(spec, p, keys, frames, ctx, uncond, batch_timesteps, *, num_new_frames, guidance_scale,
                  resample_iters, eta, ddpm_inversion, slide, baseline, progress):
    denoise, encode, decode = spec.fns(p)
    timesteps = batch_timesteps[0]  # the same for every item
    if baseline:
        lat = encode(frames[:, -1:])[:, 0]
        x = replacing_baseline_sample(keys, denoise, lat, ctx, uncond, num_frames=spec.num_frames,
                                      timesteps=timesteps, guidance_scale=guidance_scale, eta=eta, abar=spec.abar)
        return decode(x)[:, 1:]
    out = ti2v_zero_sample(keys, denoise, encode, decode, frames, ctx, uncond, num_frames=spec.num_frames,
                           num_new_frames=num_new_frames, timesteps=timesteps, guidance_scale=guidance_scale,
                           resample_iters=resample_iters, eta=eta, ddpm_inversion=ddpm_inversion, slide=slide,
                           abar=spec.abar, on_frame=_tick if progress else None)
    return out[1]


def t2v_program(spec, p, keys, ctx, uncond, batch_timesteps, *, latent_shape, guidance_scale, eta):
    denoise, _, decode = spec.fns(p)
    timesteps = batch_timesteps[0]
    x_t = schedule.normal(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys), latent_shape, spec.dtype)
    x = t2v_sample(keys, denoise, x_t, ctx, uncond, timesteps=timesteps, guidance_scale=guidance_scale,
                   eta=eta, abar=spec.abar)
    return decode(x)
