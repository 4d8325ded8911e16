"""ti2v-jax's throughput: one new frame for each of B videos per call, B = 1, 2, 4, 8.

    python benchmarks/gpu/throughput.py --config full --dtype bfloat16 --batches 1,2,4,8
        [--steps 10 --resample 4 --slide pixel] [--runs 2] [--deadline-at EPOCH_S] [--profile]
        [--ab xla_attention,...] [--out DIR]

One program per B, the same program for every B (`sampling.slide_frame`: S(R+1) guided
U-Net pairs at batch B, then for the pixel slide one decode and one encode per video), on
random weights built in JAX (timing only: no checkpoint, no PyTorch), with the platform's
automatic attention (`platforms.PLATFORMS`) unless --attention says otherwise. Per B:
compile time, first run (reported apart), the median of --runs timed runs, and from it
seconds per new frame of each video (the call), new frames per second per chip (B / call),
model FLOPs utilisation (B x S(R+1) x 2 passes x FLOPs per pass / call / chip peak; peak
known for H100/H200 only) and the device's peak memory so far (B grows, so it is B's).
`--deadline-at` (Unix seconds): a B whose estimated compile + runs would pass it is skipped
and said so. `--profile`: the kernel profile of the B=1 program (one call), per pair.
`--ab` (after the profile): variants (sets of `ab_options.SETS`: XLA options, the attention
kernel, the opt-in one-pass GroupNorm), each compiled at B=1 and timed in turns with the
default B=1 program (--rounds rounds).
Output: text on stdout and `--out`/throughput_<tag>.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2]),
                str(Path(__file__).resolve().parent)]
import configs  # noqa: E402
from ab_options import SETS  # noqa: E402
from bench import Report, attention_arg, count_flops, machine, sampler_call  # noqa: E402
from profile_unet import kernel_profile  # noqa: E402

from ti2v_jax.models.unet3d import UNet3DConditionModel  # noqa: E402
from ti2v_jax.models.vae import AutoencoderKL  # noqa: E402
from ti2v_jax.sampling import schedule  # noqa: E402
from ti2v_jax.sampling.ti2v_zero import slide_frame  # noqa: E402
from ti2v_jax.platforms import attention_for, compiler_options  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM datasheets


@jax.jit(static_argnums=(1, 2, 3))
def _random_leaf(key, shape, dtype, kind):
    z = jax.random.normal(key, shape, jnp.float32)
    if kind == "scale":
        z = 1 + 0.02 * z
    elif kind == "kernel":
        z = z / math.sqrt(max(1, math.prod(shape[:-1])))
    else:
        z = 0.02 * z
    return z.astype(dtype)


def random_state(abstract, key):
    """Random parameters for an abstract model (`nnx.eval_shape`), made on the device: norm
    scales 1 + 0.02 N, kernels N / sqrt(fan-in), everything else 0.02 N. Realistic magnitudes,
    no zeros (zeros can run faster than real data)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(nnx.state(abstract, nnx.Param))
    out = []
    for i, (path, x) in enumerate(leaves):
        name = next((k.key for k in reversed(path) if hasattr(k, "key")), "")
        kind = name if name == "scale" or (name in ("kernel", "embedding") and len(x.shape) > 1) else "other"
        out.append(_random_leaf(jax.random.fold_in(key, i), tuple(x.shape), jnp.dtype(x.dtype),
                                "kernel" if kind == "embedding" else kind))
    return jax.tree_util.tree_unflatten(tree, out)


def build(cfg_name: str, dt, vae_dt, attention):
    """(unet graphdef, unet params, vae graphdef, vae params, configs) with random weights."""
    cfg = configs.get(cfg_name)
    unet = nnx.eval_shape(lambda: UNet3DConditionModel(cfg["unet"], dtype=dt, param_dtype=dt, attention=attention))
    vae = nnx.eval_shape(lambda: AutoencoderKL(cfg["vae"], dtype=vae_dt, param_dtype=vae_dt, attention=attention))
    up = random_state(unet, jax.random.key(10))
    vp = random_state(vae, jax.random.key(11))
    ug, _ = nnx.split(unet, nnx.Param)
    vg, _ = nnx.split(vae, nnx.Param)
    return ug, up, vg, vp, cfg


def frame_fn(ug, vg, cfg, *, slide, frames, steps, resample, vae_dt, guidance=9.0):
    """frame(up, vp, keys, queue, text, empty) -> the slid latent queue: one new frame of each video."""
    sf = float(cfg["vae"].get("scaling_factor", 0.18215))
    abar = schedule.alphas_cumprod()
    timesteps = jnp.asarray(schedule.ddim_timesteps(steps))

    def frame(up, vp, keys, queue, text, empty):
        unet, vae = nnx.merge(ug, up), nnx.merge(vg, vp)
        ud = unet.dtype

        def denoise(x, t, c):
            return unet(x.astype(ud), t, c.astype(ud)).astype(jnp.float32)

        def per_frame(fn, x):  # (B, F, ...) through a network that takes (N, ...)
            y = fn(x.reshape((-1,) + x.shape[2:]))
            return y.reshape(x.shape[:2] + y.shape[1:]).astype(jnp.float32)

        def encode(f):
            return per_frame(lambda f: vae.encode(f.astype(vae_dt))[0] * sf, f)

        def decode(z):
            return per_frame(lambda z: vae.decode((z / sf).astype(vae_dt)), z)

        return sampler_call(slide_frame, keys, schedule.shares_samples(denoise), text, empty, encode, decode, queue,
                            slide=slide, num_frames=frames, timesteps=timesteps, guidance=guidance,
                            resample=resample, abar=abar)[0]

    return frame


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="full", choices=configs.NAMES)
    ap.add_argument("--dtype", default="bfloat16", help="the U-Net's dtype")
    ap.add_argument("--vae-dtype", default="float32", help="the VAE's dtype (precision policy: float32)")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--resample", type=int, default=4)
    ap.add_argument("--slide", default="pixel", choices=("pixel", "latent"))
    ap.add_argument("--runs", type=int, default=2, help="timed runs per B after the first (median)")
    ap.add_argument("--deadline-at", type=float, default=None, help="Unix time: skip what would end after it")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--ab", default="", help=f"comma list of variants at B=1, of: {', '.join(SETS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tag", default=None)
    a = ap.parse_args()
    say, t_start = Report(), time.time()
    deadline = a.deadline_at or float("inf")
    dt, vae_dt = jnp.dtype(a.dtype), jnp.dtype(a.vae_dtype)
    attention = attention_arg(a.attention)
    dev = jax.devices()[0]
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in dev.device_kind), None)
    flops = count_flops(a.config) if a.config != "full" else configs.FLOPS_PER_PASS["full"]
    pairs = a.steps * (a.resample + 1)
    opts = compiler_options(dev.platform)
    say(f"throughput: config {a.config}, U-Net {dt.name}, VAE {vae_dt.name}, K={a.frames}, S={a.steps}, "
        f"R={a.resample} ({pairs} guidance pairs per new frame), {a.slide} slide; device {dev.device_kind} "
        f"({dev.platform}), attention {attention or 'automatic'} "
        f"({attention_for(attention, dev.platform)}), jax {jax.__version__}, options {opts}")
    say(f"machine: {machine()}; date {time.strftime('%Y-%m-%dT%H:%M:%S')}; command: python {' '.join(sys.argv)}")
    say(f"U-Net model FLOPs per pass (batch 1, K=16): {flops / 1e12:.3f} TFLOP; chip peak: {peak or '-'} TFLOP/s")

    t0 = time.perf_counter()
    ug, up, vg, vp, cfg = build(a.config, dt, vae_dt, attention)
    jax.block_until_ready((up, vp))
    say(f"random weights built in {time.perf_counter() - t0:.1f} s")
    lat, c_in = cfg["unet"].get("sample_size", 32), cfg["unet"].get("in_channels", 4)
    d = cfg["unet"]["cross_attention_dim"]

    def inputs(b):
        keys = jax.random.split(jax.random.key(0), b)
        q = jax.random.normal(jax.random.key(1), (b, a.frames - 1, lat, lat, c_in), jnp.float32)
        ctx = jax.random.normal(jax.random.key(2), (2, b, 77, d), jnp.float32)
        return keys, q, ctx[0], ctx[1]

    def dev_peak():
        try:
            return dev.memory_stats().get("peak_bytes_in_use", 0) / 2**30
        except Exception:  # noqa: BLE001 - CPU: no device statistics
            return None

    def compile_b(b, graph=ug, options=opts):
        frame = frame_fn(graph, vg, cfg, slide=a.slide, frames=a.frames, steps=a.steps, resample=a.resample,
                         vae_dt=vae_dt)
        keys, q, text, empty = inputs(b)
        t0 = time.perf_counter()
        c = jax.jit(frame, donate_argnums=(3,), compiler_options=options or None).lower(
            up, vp, keys, q, text, empty).compile()
        compile_s = time.perf_counter() - t0

        def run():
            return jax.block_until_ready(c(up, vp, keys, jnp.array(q, copy=True), text, empty))
        return c, run, compile_s, (up, vp, keys, q, text, empty)

    rows, est_compile, last = [], None, None
    kept = {}
    for b in [int(x) for x in a.batches.split(",") if x]:
        if last is not None:
            est = 1.15 * est_compile + (1 + a.runs) * last[1] * b / last[0] + 10
            left = deadline - time.time()
            if est > left:
                say(f"B={b}: SKIPPED (estimated {est:.0f} s for compile and runs, {left:.0f} s left)")
                rows.append(dict(batch=b, skipped=f"estimated {est:.0f} s, {left:.0f} s left"))
                continue
        try:
            c, run, compile_s, args = compile_b(b)
            t0 = time.perf_counter()
            run()
            first = time.perf_counter() - t0
            ts = []
            for _ in range(a.runs):
                t0 = time.perf_counter()
                out = run()
                ts.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large B: say so, go on
            say(f"B={b}: FAILED ({type(e).__name__}: {str(e).splitlines()[0][:300]})")
            rows.append(dict(batch=b, error=f"{type(e).__name__}: {str(e)[:300]}"))
            break
        m = statistics.median(ts)
        finite = bool(np.isfinite(np.asarray(out, np.float32)).all())
        row = dict(batch=b, compile_s=compile_s, first_run_s=first, call_s=m, runs_s=ts,
                   s_per_frame_per_video=m, amortised_s_per_frame=m / b, frames_per_s_per_chip=b / m,
                   ms_per_pair=m / pairs * 1e3, tflops=b * pairs * 2 * flops / m / 1e12,
                   peak_device_gib=dev_peak(), finite=finite)
        row["mfu"] = row["tflops"] / peak if peak else None
        rows.append(row)
        say(f"B={b}: call {m:.3f} s (runs {[round(x, 3) for x in ts]}; first {first:.3f} s; compile {compile_s:.1f} s)"
            f" = {row['frames_per_s_per_chip']:.3f} new frames/s/chip, {row['amortised_s_per_frame']:.3f} s per frame"
            f" amortised, {row['ms_per_pair']:.1f} ms per batch-{b} pair, {row['tflops']:.1f} TFLOP/s"
            + (f" = {row['mfu']:.1%} MFU" if peak else "")
            + (f", peak device memory {row['peak_device_gib']:.2f} GiB" if row["peak_device_gib"] is not None else "")
            + ("" if finite else ", NON-FINITE output"))
        est_compile, last = max(est_compile or 0, compile_s), (b, m)
        if b == 1:
            kept[1] = (c, run, args)
        del c, run, args

    say("\n| B videos per call | s per new frame of each video | new frames/s per chip | amortised s per frame | "
        "ms per pair | MFU | peak device memory | compile |")
    say("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "call_s" not in r:
            say(f"| {r['batch']} | {r.get('skipped') or r.get('error')} | | | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        mem = f"{r['peak_device_gib']:.2f} GiB" if r["peak_device_gib"] is not None else "-"
        say(f"| {r['batch']} | {r['call_s']:.3f} s | {r['frames_per_s_per_chip']:.3f} | "
            f"{r['amortised_s_per_frame']:.3f} s | {r['ms_per_pair']:.1f} | {mfu} | {mem} | {r['compile_s']:.1f} s |")

    if a.profile and 1 in kept:
        c, run, args = kept[1]
        est = 4 * (rows[0].get("call_s") or 0) + 30
        if est > deadline - time.time():
            say(f"profile: SKIPPED ({deadline - time.time():.0f} s left)")
        else:
            say(f"\nkernel profile of the B=1 frame program ({pairs} pairs a call, 1 call)")
            queue = jnp.array(args[3], copy=True)
            kernel_profile(c, (*args[:3], queue, *args[4:]), say, calls=1, per_call=pairs, unit="pair", top=30)

    ab = {}
    names = [n for n in a.ab.split(",") if n]
    if names and 1 in kept:
        progs = {"default": kept[1][1]}
        for name in names:
            extra = dict(SETS[name])
            att = extra.pop("attention", attention)
            gn = extra.pop("group_norm", "two_pass")
            est = 1.15 * (est_compile or 0) + (1 + a.rounds) * 2 * (last[1] if last else 0) + 10
            if est > deadline - time.time():
                say(f"A/B {name}: SKIPPED (estimated {est:.0f} s, {deadline - time.time():.0f} s left)")
                continue
            try:
                unet = nnx.eval_shape(lambda att=att, gn=gn: UNet3DConditionModel(
                    cfg["unet"], dtype=dt, param_dtype=dt, attention=att, group_norm=gn))
                g, _ = nnx.split(unet, nnx.Param)
                _, run, cs, _ = compile_b(1, graph=g, options={**opts, **extra})
                run()
                progs[name] = run
                say(f"A/B {name}: attention {att or 'automatic'}, group_norm {gn}, options: the package's + {extra}, "
                    f"compile {cs:.1f} s")
            except Exception as e:  # noqa: BLE001 - a refused option: say so, go on
                say(f"A/B {name}: refused ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        times = {n: [] for n in progs}
        for _ in range(a.rounds):
            for n, run in progs.items():
                if time.time() > deadline:
                    break
                t0 = time.perf_counter()
                run()
                times[n].append(time.perf_counter() - t0)
        for n, v in times.items():
            if v:
                ab[n] = dict(median_s=statistics.median(v), rounds_s=v)
                say(f"A/B B=1 {n:16s} median {statistics.median(v):.3f} s per new frame "
                    f"({statistics.median(v) / pairs * 1e3:.1f} ms per pair); rounds {[round(x, 3) for x in v]}")

    say(f"\nthroughput.py wall {time.time() - t_start:.0f} s")
    tag = a.tag or f"{dev.platform}_{a.config}_{dt.name}"
    if a.out:
        say.write(a.out, f"throughput_{tag}.txt")
        (Path(a.out) / f"throughput_{tag}.json").write_text(json.dumps(dict(
            config=a.config, dtype=dt.name, vae_dtype=vae_dt.name, device=dev.device_kind, platform=dev.platform,
            attention=attention_for(attention, dev.platform), steps=a.steps, resample=a.resample,
            pairs_per_frame=pairs, slide=a.slide, flops_per_pass=flops, peak_tflops=peak, options=opts,
            rows=rows, ab=ab, machine=machine(), command="python " + " ".join(sys.argv)), indent=1, default=str))


if __name__ == "__main__":
    main()
