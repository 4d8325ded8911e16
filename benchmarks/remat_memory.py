"""Memory (and time) of jax.grad through a whole new frame, with and without rematerialisation.

    python3 benchmarks/remat_memory.py memory [--config small] [--grid S:R,...]
    python3 benchmarks/remat_memory.py time [--steps 2 --resample 1]

memory: the gradient of a loss on one new frame (pixel slide, g=9) with respect to the start
image, the text context and the initial noise, compiled for abstract weights of the config
(random-weight shapes, nothing allocated), and XLA's `memory_analysis()` of the compiled
program: temp + argument + output bytes (the peak a run needs, less fragmentation), for each
(S, R) of the grid, remat off and on. No run: the plain gradient at S=10, R=4 on `small`
needs more memory than this machine has.
time: the same gradient on the shipped tiny default model (real weights), compiled and run,
remat off and on: compile time, the median of 3 runs and the compiled memory.
residuals: the bytes kept for the backward pass (`jax.ad_checkpoint.saved_residuals`; traced
only), over the grid: how the memory grows with S and R, where compiling every point is too slow.

Writes JSON lines to benchmarks/out/remat_<what>_<config>.jsonl and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

OUT = Path(__file__).resolve().parent / "out"


def abstract_components(config: str):
    import configs
    from flax import nnx

    from ti2v_jax import loading
    from ti2v_jax.weights.components import COMPONENTS

    cfg = configs.get(config)
    splits = {}
    for name in ("unet", "vae"):
        model = COMPONENTS[name].abstract(cfg[name])
        splits[name] = nnx.split(model, nnx.Param, ...)
    return loading.from_splits(splits, cfg), cfg


def grad_fn(comps, *, num_frames, steps, resample, remat, loss_only=False):
    from ti2v_jax import programs
    from ti2v_jax import sampling as S

    spec = programs.ProgramSpec(comps, num_frames, S.alphas_cumprod())
    ts = S.ddim_timesteps(steps)

    def loss(frames, text, noise, empty, p):
        denoise, encode, decode = spec.fns(p)
        _, px = S.ti2v_zero_sample(jax.random.key(0), S.cfg_denoiser(denoise, text, empty), encode, decode, frames,
                                   num_frames=num_frames, num_new_frames=1, timesteps=ts, guidance=9.0,
                                   resample=resample, slide="pixel", init_noise=noise, remat=remat)
        w = jnp.linspace(-1.0, 1.0, px.shape[-2])
        return jnp.mean(px[..., 0] * w)  # red mass to the right

    return loss if loss_only else jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def shapes(comps, cfg_unet, num_frames):
    lat = cfg_unet.get("sample_size", 32)
    scale = 2 ** (len(comps.configs["vae"]["block_out_channels"]) - 1)
    d = cfg_unet["cross_attention_dim"]
    c = cfg_unet.get("in_channels", 4)
    return dict(frames=(1, 1, lat * scale, lat * scale, 3), text=(1, 77, d), noise=(1, 1, num_frames, lat, lat, c))


def mem_of(compiled):
    m = compiled.memory_analysis()
    parts = dict(temp=m.temp_size_in_bytes, argument=m.argument_size_in_bytes, output=m.output_size_in_bytes)
    return parts, sum(parts.values())


def memory(args):
    if args.config == "default":  # the shipped tiny model: K=8, 32x32 (its compiles take seconds, not minutes)
        from ti2v_jax import loading
        from ti2v_jax.pipeline import DEFAULT_MODEL
        comps = loading.load(DEFAULT_MODEL, tokenizer=False)
        cfg, k = comps.configs, 8
    else:
        comps, cfg = abstract_components(args.config)
        k = 16
    sh = shapes(comps, cfg["unet"], k)
    sds = lambda s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          {n: comps.params[n] for n in ("unet", "vae")})
    out = OUT / f"remat_memory_{args.config}.jsonl"
    rows = []
    for item in args.grid.split(","):
        s, r = (int(v) for v in item.split(":"))
        for remat in (False, True):
            t0 = time.perf_counter()
            fn = grad_fn(comps, num_frames=k, steps=s, resample=r, remat=remat)
            # LLVM optimisation off: compiles several times faster on this CPU; buffer assignment (the
            # memory figures) is XLA's and does not depend on it.
            compiled = fn.lower(sds(sh["frames"]), sds(sh["text"]), sds(sh["noise"]), sds(sh["text"]),
                                params).compile(compiler_options={"xla_backend_optimization_level": 0})
            parts, total = mem_of(compiled)
            row = dict(config=args.config, K=k, N=1, S=s, R=r, remat=remat, total_bytes=total, **parts,
                       compile_s=round(time.perf_counter() - t0, 1))
            rows.append(row)
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"S={s:2d} R={r} remat={'on ' if remat else 'off'}: {total / 2**30:8.3f} GiB "
                  f"(temp {parts['temp'] / 2**30:.3f}, args {parts['argument'] / 2**30:.3f}, "
                  f"out {parts['output'] / 2**30:.3f}); compiled in {row['compile_s']} s", flush=True)
            del compiled, fn
    return rows


def residuals(args):
    """Bytes the backward pass keeps (jax.ad_checkpoint.saved_residuals: traced, not compiled, so cheap
    enough for a whole S x R grid): the part of the memory that grows with S and R."""
    from jax._src.ad_checkpoint import saved_residuals  # what jax.ad_checkpoint.print_saved_residuals prints

    comps, cfg = abstract_components(args.config)
    k = 16
    sh = shapes(comps, cfg["unet"], k)
    sds = lambda s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    params = {n: comps.params[n] for n in ("unet", "vae")}
    out = OUT / f"remat_residuals_{args.config}.jsonl"
    for item in args.grid.split(","):
        s, r = (int(v) for v in item.split(":"))
        for remat in {"both": (False, True), "on": (True,), "off": (False,)}[args.remat]:
            t0 = time.perf_counter()
            loss = grad_fn(comps, num_frames=k, steps=s, resample=r, remat=remat, loss_only=True)
            res = saved_residuals(lambda f, t, n, e, p: loss(f, t, n, e, p), sds(sh["frames"]), sds(sh["text"]),
                                  sds(sh["noise"]), sds(sh["text"]), params)
            res = [(a, d) for a, d in res if "from the argument" not in d]  # the inputs themselves
            nbytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a, _ in res)
            row = dict(config=args.config, K=k, N=1, S=s, R=r, remat=remat, residual_bytes=nbytes, count=len(res),
                       trace_s=round(time.perf_counter() - t0, 1))
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"S={s:2d} R={r} remat={'on ' if remat else 'off'}: residuals {nbytes / 2**30:8.3f} GiB in "
                  f"{len(res)} arrays (traced in {row['trace_s']} s)", flush=True)


def timing(args):
    from ti2v_jax import io, loading
    from ti2v_jax.pipeline import DEFAULT_MODEL
    from ti2v_jax.tokenizer import tokenize

    comps = loading.load(DEFAULT_MODEL)
    k = 8
    ids = jnp.asarray(tokenize(comps.tokenizer, ["a red circle moving right", ""]))
    ctx = comps.text_encode(comps.params["text_encoder"], ids)
    frames = jnp.asarray(io.load_image(Path(__file__).resolve().parents[1] / "examples" / "start_red_circle.png",
                                       (32, 32))[None, None])
    lat = comps.configs["unet"].get("sample_size", 4)
    noise = jax.random.normal(jax.random.key(1), (1, 1, k, lat, lat, comps.configs["unet"].get("in_channels", 4)))
    params = {n: comps.params[n] for n in ("unet", "vae")}
    out = OUT / "remat_time_default.jsonl"
    grads = {}
    for remat in (False, True):
        fn = grad_fn(comps, num_frames=k, steps=args.steps, resample=args.resample, remat=remat)
        a = (frames, ctx[:1], noise, ctx[1:], params)
        t0 = time.perf_counter()
        compiled = fn.lower(*a).compile()
        compile_s = time.perf_counter() - t0
        _, total = mem_of(compiled)
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            g = jax.block_until_ready(compiled(*a))
            ts.append(time.perf_counter() - t0)
        grads[remat] = g
        row = dict(model="default", K=k, N=1, S=args.steps, R=args.resample, remat=remat, compile_s=round(compile_s, 1),
                   run_s_median=round(float(np.median(ts)), 3), runs_s=[round(t, 3) for t in ts], total_bytes=total)
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"default model S={args.steps} R={args.resample} remat={'on ' if remat else 'off'}: compile "
              f"{compile_s:.1f} s, run median {np.median(ts):.3f} s of {[round(t, 3) for t in ts]}, "
              f"memory {total / 2**20:.1f} MiB", flush=True)
    diff = max(float(jnp.abs(x - y).max()) for x, y in zip(grads[False], grads[True]))
    print(f"remat vs plain gradient: max abs diff {diff:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("memory", "residuals", "time"))
    ap.add_argument("--config", default="small", help="small (benchmarks/configs.py, abstract weights) or default "
                    "(the shipped tiny model)")
    ap.add_argument("--grid", default="2:4,4:4,10:4,10:0,10:2", help="S:R pairs")
    ap.add_argument("--remat", default="both", choices=("both", "on", "off"), help="residuals: which to trace")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--resample", type=int, default=1)
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; command: remat_memory.py {args.what}", flush=True)
    {"memory": memory, "residuals": residuals, "time": timing}[args.what](args)


if __name__ == "__main__":
    main()
