"""Plain text-to-video DDIM sampling (Song et al. 2021) with classifier-free guidance.

The reference the TI2V-Zero sampler builds on, and the one checked against
diffusers' TextToVideoSDPipeline. `guided` is a guided denoiser as in ti2v_zero.py
(`guidance.cfg_denoiser`); guidance and eta are per-step settings as there (a Python
number, (S,) or (B, S)). The initial latents x_T are the caller's (e.g.
`normal(fold(item_keys(key, B), 0), shape)`); the state is kept in `state_dtype(x_T.dtype)`.

Randomness (used only when eta is not statically 0): item b's own key k_b (`key`: the
batch's keys (B,), or one key for one video, as in ti2v_zero.py); step j's eta noise is
normal(fold_in(k_bj, 2)) with k_bj = fold_in(fold_in(k_b, 1), j) -- the TI2V-Zero scheme
(draw d = 2, pass 0) with k_b in place of the frame key.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ti2v_jax.settings import SamplerSettings

from .guidance import _per_item
from .schedule import alphas_cumprod, ddim_step, fold, item_keys, next_timesteps, normal, state_dtype, step_key
from .ti2v_zero import _is_static, _maybe_remat, _rows, _unet

# Defaults of the keyword arguments: the settings' own (SamplerSettings, the one place they are set).
_DEFAULTS = SamplerSettings()


def t2v_sample(key, guided, x_T, *, timesteps, guidance=_DEFAULTS.guidance, eta=_DEFAULTS.eta, abar=None,
               on_step=None, remat=False):
    """DDIM from x_T (B,F,h,w,C) over `timesteps` (S,) down to abar[0]; returns x_0 latents.

    on_step(j, x): called while tracing after each DDIM step (e.g. a progress report);
    remat: rematerialise each U-Net call and step for gradients (see ti2v_zero.py).
    """
    abar = alphas_cumprod() if abar is None else abar
    x_T = x_T.astype(state_dtype(x_T.dtype))
    b = x_T.shape[0]
    keys = item_keys(key, b)
    timesteps = jnp.asarray(timesteps, jnp.int32)
    n_steps = timesteps.shape[0]
    static_eta0 = _is_static(eta) and eta == 0
    sched = {name: _rows(v, b, n_steps, jnp.float32) for name, v in (("g", guidance), ("eta", eta))
             if not _is_static(v)}
    unet = _unet(guided, remat)

    def step(x, inp):
        t, tn, j, row = inp
        eps = unet(x, t, row.get("g", guidance))
        eta_j = _per_item(row["eta"], b, x.ndim, x.dtype) if "eta" in row else eta
        z = None if static_eta0 else normal(fold(step_key(keys, j), 2), x.shape[1:], x.dtype)
        x = ddim_step(x, eps, t, tn, abar, eta_j, z)
        if on_step is not None:
            on_step(j, x)
        return x, None

    x, _ = lax.scan(_maybe_remat(step, remat), x_T,
                    (timesteps, next_timesteps(timesteps), jnp.arange(n_steps), sched))
    return x
