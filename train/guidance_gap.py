"""The guidance gap of a model: RMS of eps(caption) - eps("") on the window's last frame, per timestep.

    python train/guidance_gap.py ti2v_jax/assets/default_model [MODEL ...]

Held-out clips (synthetic EVAL stream, 80% resting before they move, like a TI2V-Zero queue),
all frames noised to the same t. At low noise the caption is visible in the video, so an
ideal model's two predictions coincide there; guidance multiplies what is left (at g=9 a gap
of about 0.14 at t=101 pinches squares into stars, see train/README.md). Also prints the
last frame's epsilon loss with the caption and with "".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ti2v_jax import loading  # noqa: E402
from ti2v_jax.sampling.schedule import alphas_cumprod, q_sample  # noqa: E402
from ti2v_jax.toy import evaluation, synthetic  # noqa: E402

TIMESTEPS = (1, 101, 201, 301, 501, 701, 901)


def guidance_gap(model_dir, n=48, seed=5, timesteps=TIMESTEPS):
    """{t: (gap, loss with caption, loss with "")} for one exported model directory."""
    model = loading.load(Path(model_dir))
    specs = synthetic.sample_specs(seed, n, stream=synthetic.EVAL, hold_prob=0.8)
    videos = np.stack([synthetic.render(s) for s in specs])
    lat = model.vae_encode(model.vae_params, jnp.asarray(videos).astype(jnp.float32) / 127.5 - 1)
    ctx, unc = evaluation.contexts(model, [s.caption for s in specs])
    unet = jax.jit(lambda x, t, c: model.unet_apply(model.unet_params, x, t, c))
    abar = alphas_cumprod()
    out = {}
    for t in timesteps:
        eps = jax.random.normal(jax.random.key(t), lat.shape)
        xt = q_sample(lat, t, eps, abar)
        tt = jnp.full((n,), t)
        ec, eu = unet(xt, tt, ctx)[:, -1], unet(xt, tt, unc)[:, -1]
        out[t] = (float(jnp.sqrt(jnp.mean((ec - eu) ** 2))), float(jnp.mean((ec - eps[:, -1]) ** 2)),
                  float(jnp.mean((eu - eps[:, -1]) ** 2)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="exported model directories")
    p.add_argument("--clips", type=int, default=48)
    a = p.parse_args(argv)
    for m in a.models:
        print(m)
        for t, (gap, lc, lu) in guidance_gap(m, a.clips).items():
            print(f"  t={t:3d}: gap {gap:.3f}   last-frame loss with caption {lc:.4f}, with \"\" {lu:.4f}")


if __name__ == "__main__":
    main()
