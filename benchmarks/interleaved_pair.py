"""The guidance pair, ti2v-jax against the PyTorch reference, interleaved in time (CPU).

    python benchmarks/interleaved_pair.py [--config small] [--rounds 12] [--calls 3]

On a shared machine whose speed drifts by 10-40% within minutes, `bench.py` (ti2v-jax's
process first, then the reference's) can see the two under different loads. Here each
implementation runs in its own long-lived process, and the two take turns: a round times
`--calls` pairs of one, then of the other (the order alternating, a 1 s pause between),
so both see the same minutes. Per round the
ratio of the two medians; printed: the median and range of those ratios and each side's
median pair time. Same weights as `bench.py` (random, perturbed diffusers modules; torch
reads them with `from_pretrained`, ti2v-jax converts them with `loading.load`), same pair:
ti2v-jax one call with both contexts, the reference a text and an empty-text call of
batch 1 each, as the published code runs them. A new frame is S(R+1) such pairs (plus, with
the pixel slide, VAE work that favours ti2v-jax), so the pair ratio is what the frame
ratio follows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def child_jax(weights: str):
    import jax
    import jax.numpy as jnp

    from bench import PAIR_T
    from ti2v_jax import loading
    from ti2v_jax.xla_options import jit

    comps = loading.load(weights, tokenizer=False)
    p = jax.block_until_ready(comps.params)
    cfg = comps.configs["unet"]
    lat, width = cfg.get("sample_size", 32), cfg["cross_attention_dim"]
    x = jax.random.normal(jax.random.key(1), (1, 16, lat, lat, cfg.get("in_channels", 4)))
    ctx = jax.random.normal(jax.random.key(2), (2, 77, width))
    t = jnp.full((1,), PAIR_T, jnp.int32)
    pair = jit(comps.unet_apply).lower(p["unet"], x, t, ctx).compile()
    return lambda: jax.block_until_ready(pair(p["unet"], x, t, ctx))


def child_torch(weights: str):
    import torch
    from diffusers import UNet3DConditionModel

    from bench import PAIR_T
    from reference_torch import TorchTI2VZero

    unet = UNet3DConditionModel.from_pretrained(Path(weights) / "unet").eval()
    ref = TorchTI2VZero(unet, None, device=torch.device("cpu"), autocast_dtype=None, num_frames=16,
                        scaling_factor=0.18215)
    g = torch.Generator().manual_seed(1)
    lat, width = unet.config.sample_size, unet.config.cross_attention_dim
    x = torch.randn(1, 4, 16, lat, lat, generator=g)
    text, empty = torch.randn(1, 77, width, generator=g), torch.randn(1, 77, width, generator=g)
    return lambda: ref.unet_pair(x, PAIR_T, text, empty)


def child(impl: str, weights: str, calls: int):
    """Serve timing requests on stdin: each line -> `calls` timed pairs, printed as JSON."""
    from bench import median_time

    run = (child_jax if impl == "jax" else child_torch)(weights)
    run()  # compile / warm up
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(median_time(run, calls)[1]), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="small")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--weights", help="existing weights dir (else made in a temp dir)")
    ap.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.weights, a.calls)
    from bench import make_weights

    tmp = tempfile.TemporaryDirectory()
    weights = a.weights or str(Path(tmp.name) / "w")
    if not a.weights:
        make_weights(a.config, Path(weights))
    procs = {}
    for impl in ("jax", "torch"):  # one at a time, so neither compiles while the other is timed
        procs[impl] = subprocess.Popen([sys.executable, __file__, "--child", impl, "--weights", weights,
                                        "--calls", str(a.calls)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True)
        while (line := procs[impl].stdout.readline()) and line.strip() != "ready":
            pass
    times = {"jax": [], "torch": []}
    ratios = []
    for r in range(a.rounds):
        med = {}
        for impl in (("jax", "torch") if r % 2 == 0 else ("torch", "jax")):
            time.sleep(1.0)  # let the other side's worker threads go idle
            procs[impl].stdin.write("go\n")
            procs[impl].stdin.flush()
            ts = json.loads(procs[impl].stdout.readline())
            times[impl] += ts
            med[impl] = statistics.median(ts)
        ratios.append(med["torch"] / med["jax"])
        print(f"round {r}: jax {med['jax']:.3f} s, torch {med['torch']:.3f} s, ratio {ratios[-1]:.2f}", flush=True)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    print(f"config {a.config}, {a.rounds} rounds x {a.calls} calls: pair jax median {statistics.median(times['jax']):.3f} s, "
          f"torch median {statistics.median(times['torch']):.3f} s; per-round speed-up median "
          f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
