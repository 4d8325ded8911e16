"""A/B of one U-Net guidance pair (one sample, both contexts; K=16, 32x32) across attention settings, interleaved.

    python benchmarks/ab_unet.py [--config small] [--dtype float32] [--rounds 3] [--impls none,xla]
                                 [--xla-options package|none|both]

`--xla-options`: a comma list of compiler option sets (`OPTION_SETS`), each a separate setting:
`package` ti2v-jax's options (`ti2v_jax.platforms`, the default), `none` XLA's defaults,
`ynn_conv` (CPU) YNNPACK for the convolutions too (ti2v-jax keeps them on XLA's own kernels,
faster on the AMD EPYCs measured; an Intel Xeon is where this is worth timing); `both` is
`package,none`.

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
from ti2v_jax.platforms import compiler_options  # noqa: E402


def unet_with(cfg: dict, dt, attention, like=None, **kw):
    """A random-weight U-Net of `cfg` built with `attention` (and the constructor's other keyword
    arguments `kw`); with `like` (another U-Net of the same config), one holding like's weights
    instead (no second random init)."""
    if like is None:
        return UNet3DConditionModel(cfg, dtype=dt, param_dtype=dt, attention=attention, rngs=nnx.Rngs(0), **kw)
    model = nnx.eval_shape(lambda: UNet3DConditionModel(cfg, dtype=dt, param_dtype=dt, attention=attention, **kw))
    nnx.update(model, nnx.state(like, nnx.Param))
    return model


_YNN = "xla_cpu_experimental_ynn_fusion_type"
OPTION_SETS = {
    "package": None,  # ti2v_jax.platforms.compiler_options(), resolved by option_set
    "none": {},
    "ynn_conv": {_YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE,"
                       "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
}


def option_set(name: str) -> dict:
    """The compiler options of `OPTION_SETS[name]` ("package": ti2v-jax's for this platform)."""
    return compiler_options() if OPTION_SETS[name] is None else OPTION_SETS[name]


def pair_programs(cfg: dict, dt, impls, frames: int = 16, options: dict | None = None):
    """A random-weight U-Net of `cfg`, the inputs of one guidance pair (K=`frames`: one sample
    and its two contexts, as guidance sends them), and the pair compiled once per attention
    setting in `impls` (None: the platform's automatic choice), each on the same weights
    built with that `attention=`.

    `options`: the compiler options (None: ti2v-jax's, `option_set("package")`).
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
        opts = option_set("package") if options is None else options
        fns[impl] = jax.jit(fn, compiler_options=opts or None).lower(st, x, t, c).compile()
        compile_s[impl] = time.perf_counter() - t0
    return fns, compile_s, (st, x, t, c)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="small")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--impls", default="none,xla", help="attention choices (none: automatic per platform)")
    ap.add_argument("--xla-options", default="package", help=f"comma list of: {', '.join(OPTION_SETS)}; or both")
    a = ap.parse_args()
    names = a.impls.split(",")
    sets = ["package", "none"] if a.xla_options == "both" else a.xla_options.split(",")
    if unknown := set(sets) - set(OPTION_SETS):
        ap.error(f"unknown --xla-options {sorted(unknown)}; choose from {', '.join(OPTION_SETS)}")
    fns = {}
    for opts in sets:
        got, _, args = pair_programs(configs.get(a.config)["unet"], jnp.dtype(a.dtype),
                                     [None if n == "none" else n for n in names],
                                     options=option_set(opts))
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
