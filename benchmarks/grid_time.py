"""A guidance x resampling-schedule grid as ONE batched program vs its points one by one.

    python3 benchmarks/grid_time.py [--steps 10 --frames 3 --rounds 3]

Shipped default model, start examples/start_red_circle.png, "a red circle moving right", pixel
slide, seed 0 for every point; grid: guidance {3, 6, 9} x resample {R everywhere, R in the first
half of the steps then 0} (R = 4). Both ways use `programs.ti2v_program` (the pipeline's
program): the grid as one batch of P points (one row of per-step settings each), the points as
P calls of the batch-1 program (compiled once: the settings are traced). Reports compile time,
the median over rounds of the run time of the whole grid each way, and the largest difference
between the two ways' videos. Writes benchmarks/out/grid_time_default.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ti2v_jax import io, loading, programs
from ti2v_jax import sampling as S
from ti2v_jax.parallel import per_item_keys
from ti2v_jax.pipeline import DEFAULT_MODEL
from ti2v_jax.tokenizer import tokenize

ROOT = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--resample", type=int, default=4)
ap.add_argument("--frames", type=int, default=3)
ap.add_argument("--rounds", type=int, default=3)
a = ap.parse_args()

comps = loading.load(DEFAULT_MODEL)
K = 8
spec = programs.ProgramSpec(comps, K, S.alphas_cumprod())
ids = jnp.asarray(tokenize(comps.tokenizer, ["a red circle moving right", ""]))
ctx = comps.text_encode(comps.params["text_encoder"], ids)
half = a.steps // 2
points, rows = S.grid(a.steps, guidance=[3.0, 6.0, 9.0],
                      resample=[a.resample, (a.resample,) * half + (0,) * (a.steps - half)])
P = len(points)
frame = io.load_image(ROOT / "examples" / "start_red_circle.png", (32, 32))
prog = jax.jit(functools.partial(programs.ti2v_program, spec, num_new_frames=a.frames, max_resample=a.resample,
                                 guided=True, stochastic=False, inversion=True, slide="pixel", baseline=False))


def args_for(idx):
    b = len(idx)
    rep = lambda x: jnp.broadcast_to(x, (b,) + x.shape[1:])  # noqa: E731
    return (comps.params, per_item_keys([0] * b), rep(jnp.asarray(frame[None, None])), rep(ctx[:1]), rep(ctx[1:]),
            jnp.broadcast_to(jnp.asarray(S.ddim_timesteps(a.steps)), (b, a.steps)),
            jnp.asarray(rows["guidance"][idx]), jnp.asarray(rows["eta"][idx]), jnp.asarray(rows["resample"][idx]),
            jnp.zeros((b,), jnp.int32))


def timed(f):
    t0 = time.perf_counter()
    out = jax.block_until_ready(f())
    return out, time.perf_counter() - t0


grid_args = args_for(list(range(P)))
one_args = [args_for([i]) for i in range(P)]
t0 = time.perf_counter()
c_grid = prog.lower(*grid_args).compile()
compile_grid = time.perf_counter() - t0
t0 = time.perf_counter()
c_one = prog.lower(*one_args[0]).compile()
compile_one = time.perf_counter() - t0
res = {"grid": [], "one_by_one": []}
for r in range(a.rounds):  # interleaved
    out_grid, t = timed(lambda: c_grid(*grid_args))
    res["grid"].append(t)
    t0 = time.perf_counter()
    outs = [jax.block_until_ready(c_one(*x)) for x in one_args]
    res["one_by_one"].append(time.perf_counter() - t0)
diff = max(float(jnp.abs(out_grid[1][i] - outs[i][1][0]).max()) for i in range(P))
u8 = max(int(np.abs(io.to_uint8(np.asarray(out_grid[1][i])).astype(int)
                    - io.to_uint8(np.asarray(outs[i][1][0])).astype(int)).max()) for i in range(P))
summary = dict(points=P, steps=a.steps, resample=a.resample, new_frames=a.frames, rounds=a.rounds,
               compile_grid_s=round(compile_grid, 1), compile_one_s=round(compile_one, 1),
               grid_run_s=[round(t, 3) for t in res["grid"]], one_by_one_run_s=[round(t, 3) for t in res["one_by_one"]],
               grid_median_s=round(float(np.median(res["grid"])), 3),
               one_by_one_median_s=round(float(np.median(res["one_by_one"])), 3),
               max_abs_frame_diff=diff, max_uint8_diff=u8, device=jax.devices()[0].device_kind, jax=jax.__version__)
print(json.dumps(summary, indent=1))
print(f"{P} points (guidance 3/6/9 x resample {a.resample} everywhere / first half): one program "
      f"{summary['grid_median_s']} s vs one by one {summary['one_by_one_median_s']} s "
      f"({summary['one_by_one_median_s'] / summary['grid_median_s']:.2f}x); compile {compile_grid:.0f} s vs {compile_one:.0f} s")
(ROOT / "benchmarks" / "out").mkdir(exist_ok=True)
(ROOT / "benchmarks" / "out" / "grid_time_default.json").write_text(json.dumps(summary, indent=1) + "\n")
