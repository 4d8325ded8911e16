"""A guidance x resampling-schedule grid for one start image, in ONE compiled program.

    python examples/schedule_grid.py                          # a few minutes on a CPU
    python examples/schedule_grid.py --steps 10 --frames 7 --guidance 3,6,9,12

Every grid point is one item of a batch: the same start image and noise (seed), its own
per-step guidance and resampling passes (`sampling.grid` builds the rows), so the whole grid
is one call of the pipeline's program (`programs.ti2v_program`) and other values of the same
grid size reuse the compiled program. The resampling schedules compared: R passes in every
step, and R passes in the first half of the steps only (0 after), a natural ablation of the
paper's resampling. Writes a contact sheet (one row per point: start image, then the new
frames; labelled) and prints each point's measured displacement along the prompt's direction.
"""

import argparse
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from ti2v_jax import io, loading, programs
from ti2v_jax import sampling as S
from ti2v_jax.parallel import per_item_keys
from ti2v_jax.pipeline import DEFAULT_MODEL
from ti2v_jax.tokenizer import tokenize
from ti2v_jax.toy import evaluation, synthetic

HERE = Path(__file__).resolve().parent
p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--image", default=str(HERE / "start_red_circle.png"))
p.add_argument("--prompt", default="a red circle moving right")
p.add_argument("--direction", default="right", choices=list(synthetic.DIRECTIONS))
p.add_argument("--guidance", default="3,6,9", help="guidance scales, comma-separated")
p.add_argument("--resample", type=int, default=4, help="R of the two schedules")
p.add_argument("--steps", type=int, default=4)
p.add_argument("--frames", type=int, default=3, help="new frames N")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--scale", type=int, default=3, help="contact sheet pixels per video pixel")
p.add_argument("--out", default="schedule_grid.png")
a = p.parse_args()

comps = loading.load(DEFAULT_MODEL)
K, size = 8, 32
spec = programs.ProgramSpec(comps, K, S.alphas_cumprod())
ids = jnp.asarray(tokenize(comps.tokenizer, [a.prompt, ""]))
ctx = comps.text_encode(comps.params["text_encoder"], ids)
half = a.steps // 2
schedules = {f"R={a.resample}": a.resample,
             f"R={a.resample} first {half}": (a.resample,) * half + (0,) * (a.steps - half)}
points, rows = S.grid(a.steps, guidance=[float(g) for g in a.guidance.split(",")],
                      resample=list(schedules.values()))
n = len(points)
start = io.load_image(a.image, (size, size))
rep = lambda x: jnp.broadcast_to(x, (n,) + x.shape[1:])  # noqa: E731
prog = jax.jit(functools.partial(programs.ti2v_program, spec, num_new_frames=a.frames, max_resample=a.resample,
                                 guided=True, stochastic=False, inversion=True, slide="pixel", baseline=False))
t0 = time.perf_counter()
with programs.progress(lambda done, total: print(f"  frame {done}/{total} of all {n} points", flush=True)) as t:
    _, px = prog(comps.params, per_item_keys([a.seed] * n), rep(jnp.asarray(start[None, None])), rep(ctx[:1]),
                 rep(ctx[1:]), jnp.broadcast_to(jnp.asarray(S.ddim_timesteps(a.steps)), (n, a.steps)),
                 jnp.asarray(rows["guidance"]), jnp.asarray(rows["eta"]), jnp.asarray(rows["resample"]),
                 jnp.full((n,), t, jnp.int32))
    px = jax.block_until_ready(px)
print(f"{n} points in one program: {time.perf_counter() - t0:.0f} s (compile included)")

names = {v if isinstance(v, int) else tuple(v): k for k, v in schedules.items()}
unit = synthetic.DIRECTIONS[a.direction]
videos, labels = [], []
for i, pt in enumerate(points):
    video = np.concatenate([io.to_uint8(start)[None], io.to_uint8(np.asarray(px[i]))])
    d0, d1 = evaluation.analyze_frame(video[0]), evaluation.analyze_frame(video[-1])
    along = (d1.x - d0.x) * unit[0] + (d1.y - d0.y) * unit[1] if d1.found else float("nan")
    r = pt["resample"]
    label = f"g={pt['guidance']:g}, {names[r if isinstance(r, int) else tuple(r)]}"
    print(f"{label:24s} displacement along {a.direction}: {along:+.1f} px")
    videos.append(video)
    labels.append(f"{label}: {along:+.1f}px")

s = a.scale
label_h = 12
cell = size * s
sheet = Image.new("RGB", ((a.frames + 1) * cell, n * (cell + label_h)), "white")
draw = ImageDraw.Draw(sheet)
for i, video in enumerate(videos):
    y = i * (cell + label_h)
    draw.text((2, y), labels[i], fill="black")
    for j, f in enumerate(video):
        sheet.paste(Image.fromarray(f).resize((cell, cell), Image.NEAREST), (j * cell, y + label_h))
sheet.save(a.out)
print(f"wrote {a.out}: {n} rows (grid points) x {a.frames + 1} frames (start image first)")
