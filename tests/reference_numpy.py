"""An independent, eager NumPy reference of ALGORITHM.md, written as plain loops.

Float64 throughout, one batch item at a time, guidance as two separate network
calls (as the published code does). Noise comes from `noise(b, name, shape)`, where
`name` says which draw it is -- ("init", i), ("noisy", i, j), ("noisy_next", i, j),
("eta", i, j, r), ("push", i, j, r) for TI2V-Zero; ("init",), ("noisy", j),
("eta", j) for the replacing baseline; ("eta", j) for plain T2V -- so that a test
can feed it the noise a sampler drew, whatever scheme that sampler uses.
The network functions work on one item: denoise(x (K,h,w,C), t int, ctx (T,D)),
encode(frames (F,H,W,3)) -> (F,h,w,C), decode(latents (F,h,w,C)) -> (F,H,W,3).
Guidance g, eta and the resampling passes R may be one value or a list of one per DDIM step
(step j then runs R[j] resampling passes and its final pass takes eta draw R[j]).
"""

import numpy as np


def alphas_cumprod():
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


ABAR = alphas_cumprod()


def ddim_timesteps(num_steps):
    stride = 1000 // num_steps
    return [(num_steps - 1 - i) * stride + 1 for i in range(num_steps)]


def at(v, j):
    """Step j's value of a per-step setting (one value, or a list of one per step)."""
    return v[j] if isinstance(v, (list, tuple, np.ndarray)) else v


def q_sample(x0, t, z):
    return np.sqrt(ABAR[t]) * x0 + np.sqrt(1.0 - ABAR[t]) * z


def ddim(x, eps, t, t_prev, eta, z):
    a_t, a_prev = ABAR[t], ABAR[t_prev]
    x0 = (x - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)
    sigma = eta * np.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
    return np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev - sigma ** 2) * eps + sigma * z


def cfg(denoise, x, t, ctx, uctx, g):
    eps_t = denoise(x, t, ctx)
    if g == 1:
        return eps_t
    eps_u = denoise(x, t, uctx)
    return eps_u + g * (eps_t - eps_u)


def one_frame(noise, b, i, denoise, s0, ctx, uctx, K, steps, g, R, eta, inversion):
    lat = s0.shape[1:]
    z = noise(b, ("init", i), (K,) + lat)
    if inversion:
        x = np.stack([q_sample(s0[-1], steps[0], z[k]) for k in range(K)])
    else:
        x = z.copy()
    for j, t in enumerate(steps):
        t_next = steps[j + 1] if j + 1 < len(steps) else 0
        noisy = q_sample(s0, t, noise(b, ("noisy", i, j), s0.shape))
        noisy_next = q_sample(s0, t_next, noise(b, ("noisy_next", i, j), s0.shape))
        x[:K - 1] = noisy
        gj, rj, ej = at(g, j), at(R, j), at(eta, j)
        for r in range(rj):
            eps = cfg(denoise, x, t, ctx, uctx, gj)
            x = ddim(x, eps, t, t_next, ej, noise(b, ("eta", i, j, r), x.shape))
            x[:K - 1] = noisy_next
            ratio = ABAR[t] / ABAR[t_next]
            x = np.sqrt(ratio) * x + np.sqrt(1.0 - ratio) * noise(b, ("push", i, j, r), x.shape)
        eps = cfg(denoise, x, t, ctx, uctx, gj)
        x = ddim(x, eps, t, t_next, ej, noise(b, ("eta", i, j, rj), x.shape))
    return x[K - 1]


def ti2v_zero(noise, denoise, encode, decode, given, ctx, uctx, *, K, N, steps, g, R, eta,
              inversion, slide, given_is_latent=False):
    """Returns (latents (B,N,h,w,C), frames (B,N,H,W,3))."""
    all_lat, all_px = [], []
    for b in range(given.shape[0]):
        items = [np.asarray(f, np.float64) for f in given[b]]
        queue = [items[0]] * (K - 1 - len(items)) + items
        if slide == "latent" and not given_is_latent:
            queue = list(encode(np.stack(queue)))
        lats, pxs = [], []
        for i in range(N):
            s0 = encode(np.stack(queue)) if slide == "pixel" else np.stack(queue)
            new = one_frame(noise, b, i, denoise, s0, ctx[b], uctx[b], K, steps, g, R, eta, inversion)
            lats.append(new)
            if slide == "pixel":
                px = decode(new[None])[0]
                pxs.append(px)
                queue = queue[1:] + [px]
            else:
                queue = queue[1:] + [new]
        if slide == "latent":
            pxs = list(decode(np.stack(lats)))
        all_lat.append(np.stack(lats))
        all_px.append(np.stack(pxs))
    return np.stack(all_lat), np.stack(all_px)


def replacing_baseline(noise, denoise, image_latent, ctx, uctx, *, K, steps, g, eta):
    out = []
    for b in range(image_latent.shape[0]):
        z0 = np.asarray(image_latent[b], np.float64)
        x = noise(b, ("init",), (K,) + z0.shape)
        for j, t in enumerate(steps):
            t_next = steps[j + 1] if j + 1 < len(steps) else 0
            x[0] = q_sample(z0, t, noise(b, ("noisy", j), z0.shape))
            eps = cfg(denoise, x, t, ctx[b], uctx[b], at(g, j))
            x = ddim(x, eps, t, t_next, at(eta, j), noise(b, ("eta", j), x.shape))
        out.append(x)
    return np.stack(out)


def t2v(noise, denoise, x_T, ctx, uctx, *, steps, g, eta):
    out = []
    for b in range(x_T.shape[0]):
        x = np.asarray(x_T[b], np.float64)
        for j, t in enumerate(steps):
            t_next = steps[j + 1] if j + 1 < len(steps) else 0
            eps = cfg(denoise, x, t, ctx[b], uctx[b], at(g, j))
            x = ddim(x, eps, t, t_next, at(eta, j), noise(b, ("eta", j), x.shape))
        out.append(x)
    return np.stack(out)
