"""A/B of one U-Net guidance pair (one sample, both contexts; K=16, 32x32) across attention settings, interleaved.

    python benchmarks/ab_unet.py [--config small] [--dtype float32] [--rounds 3] [--impls none,xla]
                                 [--xla-options package|none|both]

`--xla-options`: compile with ti2v-jax's compiler options (`ti2v_jax.xla_options`, the
default), without them (XLA's defaults), or both ways, as separate settings.

Random weights (timing only). Each round times every setting once (median of 3 calls) so
a shared machine's load hits them alike; prints the per-setting median over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import configs  # noqa: E402
from ti2v_jax.models.unet3d import UNet3DConditionModel  # noqa: E402
from ti2v_jax.xla_options import jit  # noqa: E402


def unet_with(cfg: dict, dt, attention, like=None, **kw):
    """A random-weight U-Net of `cfg` built with `attention` (and the constructor's other keyword
    arguments `kw`); with `like` (another U-Net of the same config), one holding like's weights
    instead (no second random init)."""
    if like is None:
        return UNet3DConditionModel(cfg, dtype=dt, param_dtype=dt, attention=attention, rngs=nnx.Rngs(0), **kw)
    model = nnx.eval_shape(lambda: UNet3DConditionModel(cfg, dtype=dt, param_dtype=dt, attention=attention, **kw))
    nnx.update(model, nnx.state(like, nnx.Param))
    return model


def pair_programs(cfg: dict, dt, impls, frames: int = 16, package_options: bool = True):
    """A random-weight U-Net of `cfg`, the inputs of one guidance pair (K=`frames`: one sample
    and its two contexts, as guidance sends them), and the pair compiled once per attention
    setting in `impls` (None: the platform's automatic choice), each on the same weights
    built with that `attention=`.

    `package_options`: compile with ti2v-jax's compiler options (else XLA's defaults).
    Returns ({impl: compiled}, {impl: compile seconds}, (params, x, t, context)).
    """
    base = unet_with(cfg, dt, impls[0])
    st = nnx.state(base)
    lat, c_in = cfg.get("sample_size", 32), cfg.get("in_channels", 4)
    x = jax.random.normal(jax.random.key(1), (1, frames, lat, lat, c_in)).astype(dt)
    c = jax.random.normal(jax.random.key(2), (2, 77, cfg["cross_attention_dim"])).astype(dt)
    t = jnp.array([501])
    fns, compile_s = {}, {}
    for impl in impls:
        g = nnx.graphdef(unet_with(cfg, dt, impl, like=base))  # the attention is part of the graph
        t0 = time.perf_counter()
        fn = lambda s, x, t, c, g=g: nnx.merge(g, s)(x, t, c)  # noqa: E731
        fns[impl] = (jit(fn) if package_options else jax.jit(fn)).lower(st, x, t, c).compile()
        compile_s[impl] = time.perf_counter() - t0
    return fns, compile_s, (st, x, t, c)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="small")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--impls", default="none,xla", help="attention choices (none: automatic per platform)")
    ap.add_argument("--xla-options", choices=("package", "none", "both"), default="package")
    a = ap.parse_args()
    names = a.impls.split(",")
    fns = {}
    for opts in (("package", "none") if a.xla_options == "both" else (a.xla_options,)):
        got, _, args = pair_programs(configs.get(a.config)["unet"], jnp.dtype(a.dtype),
                                     [None if n == "none" else n for n in names], package_options=opts == "package")
        fns.update({f"{n} options={opts}": f for n, f in zip(names, got.values())})
    res = {n: [] for n in fns}
    for _ in range(a.rounds):
        for n, f in fns.items():
            f(*args).block_until_ready()
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                f(*args).block_until_ready()
                ts.append(time.perf_counter() - t0)
            res[n].append(statistics.median(ts))
    for n, v in res.items():
        print(f"{a.config} {a.dtype} attention={n}: pair median {statistics.median(v):.3f} s  rounds {[round(x, 3) for x in v]}")


if __name__ == "__main__":
    main()
