"""Where a U-Net guidance pair spends its device time: a kernel-level profile.

Builds the U-Net of a benchmark config with random weights directly in JAX (no PyTorch,
no checkpoint), times one guidance pair (one K=16-frame sample, both contexts) with each
attention choice the device has, then traces a few pairs and sums the device kernels by
name and by kind (convolution, matmul, attention, other fusions). Also times the attention kernel alone
at the U-Net's widest self-attention. Output: text on stdout and `--out`/profile_<tag>.txt.

    python benchmarks/gpu/profile_unet.py --config full --dtype bfloat16 --out $OUT
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]
from ab_unet import pair_programs  # noqa: E402
from bench import Report, median_time  # noqa: E402
from configs import NAMES, get as get_config  # noqa: E402

from ti2v_jax.models import layers  # noqa: E402


def timed(fn, repeats):
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    return median_time(fn, repeats)[0]


def kind(name: str) -> str:
    n = name.lower()
    if "flash" in n or "fmha" in n or "cudnn_sdpa" in n or "attention" in n:
        return "attention (cuDNN)"
    if "conv" in n or "implicit" in n or "fprop" in n:
        return "convolution"
    if "gemm" in n or "cutlass" in n or "matmul" in n or "sm90_xmma" in n or "cublas" in n or "nvjet" in n:
        return "matmul"
    if "reduce" in n or "norm" in n:
        return "reduction/norm fusion"
    return "other (elementwise/fusion/copy)"


def kernel_profile(fn, args, say, *, calls: int, per_call: int, unit: str, top: int):
    """Trace `calls` runs of the compiled `fn(*args)` and say where the device time went:
    per `unit` (`per_call` units per run), by kind (`kind`) and by kernel name."""
    from jax._src.lib import _profile_data

    gpu = jax.default_backend() == "gpu"
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        jax.profiler.stop_trace()
        f = sorted(glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True))[-1]
        pd = _profile_data.ProfileData.from_file(f)
    n = calls * per_call
    agg, cnt, planes = collections.Counter(), collections.Counter(), collections.Counter()
    dev_lines = [ln.name for p in pd.planes if p.name.startswith("/device:GPU") for ln in p.lines]
    # GPU: the kernels on the device's streams (else XLA's op line); CPU: the XLA worker threads.
    want = "stream" if any("stream" in s.lower() for s in dev_lines) else "xla ops"
    for plane in pd.planes:
        dev = plane.name.startswith("/device:GPU")
        for line in plane.lines:
            planes[(plane.name[:40], line.name[:40])] += sum(e.duration_ns for e in line.events)
            if gpu and not (dev and want in line.name.lower()):
                continue
            if not gpu and "Eigen" not in line.name and "PjRt" not in line.name:
                continue
            for ev in line.events:
                if "Thunk" in ev.name or "Await" in ev.name:
                    continue
                k = re.sub(r"[.\d]+$", "", ev.name)
                agg[k] += ev.duration_ns
                cnt[k] += 1
    say(f"\ntrace lines (plane, line): total ms per {unit}")
    for k, v in planes.most_common(12):
        say(f"  {v / n / 1e6:9.2f}  {k}")
    total = sum(agg.values()) / n / 1e6
    say(f"\nkernels: {total:.2f} ms per {unit} in {sum(cnt.values()) // n} kernel launches")
    kinds = collections.Counter()
    for k, v in agg.items():
        kinds[kind(k)] += v
    for k, v in kinds.most_common():
        say(f"  {v / n / 1e6:8.2f} ms  {100 * v / max(1, sum(agg.values())):5.1f}%  {k}")
    say(f"\ntop {top} kernels (ms per {unit}, launches per {unit}, name)")
    for k, v in agg.most_common(top):
        say(f"  {v / n / 1e6:8.3f} {cnt[k] // n:5d}  {k[:150]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small", choices=[n for n in NAMES if n != "tiny"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    say = Report()

    dt = jnp.dtype(a.dtype)
    cfg = dict(get_config(a.config)["unet"])
    gpu = jax.default_backend() == "gpu"
    say(f"config {a.config}, {dt.name}, K={a.frames}, devices {jax.devices()}, jax {jax.__version__}")
    impls = ["cudnn", "xla"] if gpu else [None]
    pairs, compile_s, args = pair_programs(cfg, dt, impls, a.frames)
    lat = cfg.get("sample_size", 32)
    for impl, fn in pairs.items():
        s = timed(lambda: jax.block_until_ready(fn(*args)), a.repeats)
        say(f"pair, attention {impl or 'default'}: {s * 1e3:.1f} ms (compile {compile_s[impl]:.1f} s)")

    # attention alone at level 0 (as bench.py's row)
    c0 = cfg["block_out_channels"][0]
    heads = c0 // cfg["attention_head_dim"]
    qa = jax.random.normal(jax.random.key(3), (3, 2 * a.frames, lat * lat, c0), jnp.float32).astype(dt)
    # temporal attention: (B*H*W, K tokens)
    qt = jax.random.normal(jax.random.key(4), (3, 2 * lat * lat, a.frames, c0), jnp.float32).astype(dt)
    for impl in impls:
        att = jax.jit(lambda q, k, v, impl=impl: layers.attention(q, k, v, heads, implementation=impl))
        s = timed(lambda: jax.block_until_ready(att(qa[0], qa[1], qa[2])), a.repeats)
        flops = 4 * 2 * a.frames * (lat * lat) ** 2 * c0
        say(f"attention alone ({2 * a.frames}, {lat * lat} tokens, {heads} x {c0 // heads}), {impl or 'default'}: "
            f"{s * 1e3:.3f} ms, {flops / s / 1e12:.1f} TFLOP/s")
        s = timed(lambda: jax.block_until_ready(att(qt[0], qt[1], qt[2])), a.repeats)
        say(f"temporal attention alone ({2 * lat * lat}, {a.frames} tokens, {heads} x {c0 // heads}), "
            f"{impl or 'default'}: {s * 1e3:.3f} ms")

    # kernel-level trace of the first (default) choice
    kernel_profile(pairs[impls[0]], args, say, calls=3, per_call=1, unit="pair", top=a.top)
    say.write(a.out, f"profile_{a.config}_{dt.name}.txt")


if __name__ == "__main__":
    main()
