"""Plain text-to-video DDIM sampling (Song et al. 2021) with classifier-free guidance.

The reference the TI2V-Zero sampler builds on, and the one checked against
diffusers' TextToVideoSDPipeline. `denoise` is as in ti2v_zero.py. The initial
latents x_T are the caller's (e.g. `normal(fold(item_keys(key, B), 0), shape)`).

Randomness (used only when eta is not statically 0): item b's key k_b (from
`schedule.item_keys`); step j's eta noise is normal(fold_in(k_bj, 2)) with
k_bj = fold_in(fold_in(k_b, 1), j) -- the TI2V-Zero scheme (draw d = 2, pass 0)
with k_b in place of the frame key.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .schedule import (alphas_cumprod, ddim_step, fold, guided_eps, item_keys, next_timesteps,
                       normal, step_key)


def t2v_sample(key, denoise, x_T, context, uncond_context, *, timesteps, guidance_scale=9.0,
               eta=0.0, abar=None):
    """DDIM from x_T (B,F,h,w,C) over `timesteps` (S,) down to abar[0]; returns x_0 latents."""
    abar = alphas_cumprod() if abar is None else abar
    keys = item_keys(key, x_T.shape[0])
    timesteps = jnp.asarray(timesteps, jnp.int32)
    static_eta0 = isinstance(eta, (int, float)) and eta == 0

    def step(x, inp):
        t, tn, j = inp
        eps = guided_eps(denoise, x, t, context, uncond_context, guidance_scale)
        z = None if static_eta0 else normal(fold(step_key(keys, j), 2), x.shape[1:], x.dtype)
        return ddim_step(x, eps, t, tn, abar, eta, z), None

    x, _ = lax.scan(step, x_T, (timesteps, next_timesteps(timesteps), jnp.arange(timesteps.shape[0])))
    return x
