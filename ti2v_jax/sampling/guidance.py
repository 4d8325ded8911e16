"""Classifier-free guidance as a denoiser wrapper (k-diffusion's `CFGDenoiser`, as a function).

    guided = cfg_denoiser(denoise, context, uncond_context)     # guided(x, t, g) -> eps
    eps = guided(x, t, 9.0)                                     # g: a scalar or (B,) per item

The samplers take one such `guided` denoiser; the contexts and the guidance scale are no
longer threaded through them. `denoise(x (B,...), t (B,), context (B,T,D)) -> eps` is the
network; mark it with `shares_samples` when it takes n contexts per sample (the U-Net runs
its text-free first layers once for both halves, see `UNet3DConditionModel`).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp


def shares_samples(denoise):
    """Mark `denoise` as taking n contexts per sample: denoise(x (B,...), t (B,), context (n*B,...))
    -> eps (n*B, ...), context-major, equal to denoising x and t tiled n times (as
    `UNet3DConditionModel` does, running its text-free first layers once). The guidance wrapper
    then sends x once instead of twice. Returns a marked wrapper (`denoise` itself is left as
    it is)."""
    @functools.wraps(denoise)
    def marked(x, t, context):
        return denoise(x, t, context)

    marked.shares_samples = True
    return marked


def _per_item(v, b, ndim, dtype):
    """A scalar or (B,) value, broadcastable against a (B, ...) array of `ndim` dimensions."""
    v = jnp.asarray(v, dtype)
    if v.ndim == 1:
        v = jnp.broadcast_to(v, (b,)).reshape((b,) + (1,) * (ndim - 1))
    return v


def cfg_denoiser(denoise, context, uncond_context=None, *, guided=True):
    """Wrap `denoise` with classifier-free guidance: returns guided(x, t, g) -> eps.

    eps = eps_u + g * (eps_t - eps_u), with eps_t = denoise(x, t, context) and eps_u the same
    with `uncond_context`; both halves in ONE call with the contexts [uncond; text]
    (diffusers' order): samples [x; x] and t tiled to (2B,), or x once and t (B,) for a
    `denoise` marked with `shares_samples`. t: a scalar or (B,); g: a scalar or (B,) (one
    scale per item); contexts of batch 1 are broadcast to x's batch.

    guided=False (static) is the fast path for g == 1 everywhere: only the text half is
    run and `g` is ignored. eps is returned in x's dtype (the sampler state's), whatever
    dtype the network computes in.
    """
    if guided and uncond_context is None:
        raise ValueError("cfg_denoiser with guided=True needs uncond_context")
    shared = getattr(denoise, "shares_samples", False)

    def guided_fn(x, t, g=1.0):
        b = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))
        ctx = jnp.broadcast_to(context, (b,) + context.shape[1:])
        if not guided:
            return denoise(x, t, ctx).astype(x.dtype)
        unc = jnp.broadcast_to(uncond_context, (b,) + uncond_context.shape[1:]).astype(ctx.dtype)
        contexts = jnp.concatenate([unc, ctx])
        if shared:
            eps = denoise(x, t, contexts)
        else:
            eps = denoise(jnp.concatenate([x, x]), jnp.concatenate([t, t]), contexts)
        eps = eps.astype(x.dtype)
        eps_u, eps_t = eps[:b], eps[b:]
        return eps_u + _per_item(g, b, x.ndim, eps.dtype) * (eps_t - eps_u)

    guided_fn.guided = guided
    return guided_fn


def guided_eps(denoise, x, t, context, uncond_context, g):
    """One guided prediction: `cfg_denoiser(denoise, context, uncond_context)(x, t, g)`; a Python
    `g == 1` skips the unconditional half (decided at trace time), an array `g` always runs both."""
    static_one = isinstance(g, (int, float)) and g == 1
    return cfg_denoiser(denoise, context, uncond_context, guided=not static_one)(x, t, g)
