"""Full-size U-Net in bfloat16 with random weights: parameter count, compile time, one forward, peak memory.

    python benchmarks/full_unet.py [--config path/to/unet.json] [--frames 16] [--size 32]

Parameters are materialised directly in bfloat16 from the abstract model (no float32
copy). Random weights: timing only, the output means nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ti2v_jax import MS17B_CONFIGS  # noqa: E402
from ti2v_jax.models.unet3d import UNet3DConditionModel  # noqa: E402

DEFAULT_CONFIG = MS17B_CONFIGS / "unet.json"
MODELSCOPE_PARAMS = 1_411_233_860


@partial(jax.jit, static_argnums=(1, 2))
def _normal(key, shape, dtype):
    return jax.random.normal(key, shape, dtype) * (math.prod(shape[:-1]) ** -0.5)


def random_params(abstract_params, key):
    """bf16 arrays for each abstract parameter: kernels ~ N(0, 1/fan_in), norm scales 1, biases 0.

    One array at a time (compiled once per shape), so host memory holds the bf16 parameters only.
    """
    out = {}
    for i, (path, v) in enumerate(nnx.to_flat_state(abstract_params)):
        s = v.get_value()
        if path[-1] == "kernel":
            out[path] = _normal(jax.random.fold_in(key, i), s.shape, s.dtype)
        else:
            out[path] = (jnp.ones if path[-1] == "scale" else jnp.zeros)(s.shape, s.dtype)
    return nnx.from_flat_state(out)


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=32, help="latent height and width")
    ap.add_argument("--tokens", type=int, default=77)
    args = ap.parse_args()

    config = json.loads(args.config.read_text())
    bf = jnp.bfloat16
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    t0 = time.perf_counter()
    abstract = nnx.eval_shape(lambda: UNet3DConditionModel(config, dtype=bf, param_dtype=bf))
    params = nnx.state(abstract, nnx.Param)
    count = sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(params))
    print(f"abstract model built in {time.perf_counter() - t0:.1f} s")
    print(f"parameters: {count:,}")
    if args.config == DEFAULT_CONFIG and count != MODELSCOPE_PARAMS:
        raise SystemExit(f"expected {MODELSCOPE_PARAMS:,} parameters for ModelScope 1.7B")

    t0 = time.perf_counter()
    nnx.update(abstract, random_params(params, jax.random.key(0)))
    graphdef, state = nnx.split(abstract)
    jax.block_until_ready(state)
    print(f"bf16 parameters materialised in {time.perf_counter() - t0:.1f} s "
          f"({sum(x.nbytes for x in jax.tree.leaves(state)) / 2**30:.2f} GiB)")

    keys = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(keys[0], (args.batch, args.frames, args.size, args.size, config.get("in_channels", 4)), bf)
    ctx = jax.random.normal(keys[1], (args.batch, args.tokens, config.get("cross_attention_dim", 1024)), bf)
    t = jnp.linspace(999, 1, args.batch).astype(jnp.int32)
    forward = jax.jit(lambda st, x, t, c: nnx.merge(graphdef, st)(x, t, c))

    t0 = time.perf_counter()
    lowered = forward.lower(state, x, t, ctx)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    print(f"trace+lower: {t1 - t0:.1f} s, compile: {t2 - t1:.1f} s")

    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(state, x, t, ctx))
    run = time.perf_counter() - t0
    out32 = np.asarray(out.astype(jnp.float32))
    print(f"forward {tuple(x.shape)} + context {tuple(ctx.shape)} -> {tuple(out.shape)} {out.dtype}: {run:.2f} s "
          f"(finite: {bool(np.isfinite(out32).all())}, mean |out| {np.abs(out32).mean():.3f})")
    print(f"peak host memory (ru_maxrss): {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
