"""ti2v-jax against the PyTorch reference, interleaved in time: the guidance pair or a new frame.

    python benchmarks/interleaved.py [--what pair|pixel|latent] [--config small] [--rounds 12] [--calls 3]
                                     [--peer published|tuned] [--steps 10 --resample 4 ...: bench.py's options]

On a shared machine whose speed drifts by 10-40% within minutes, `bench.py` (ti2v-jax's
process first, then the reference's) can see the two under different loads. Here each
implementation runs in its own long-lived process, and the two take turns: a round times
`--calls` runs of one, then of the other (the order alternating, a 1 s pause between), so
both see the same minutes. Per round the ratio of the two medians; printed: the median and
range of those ratios and each side's median time.

What is timed is exactly what `bench.py` times (its `jax_pair`/`torch_pair` and
`jax_frame`/`torch_frame`, same weights, same settings): `--what pair` one guidance pair
(ti2v-jax: one call with both contexts; the reference: a text and an empty-text call of
batch 1 each, as the published code runs them); `--what pixel` / `--what latent` one new
frame at S=--steps, R=--resample with that slide (the reference's pixel slide re-encodes
the K-1 queue frames, as published). `--peer tuned` takes the tuned PyTorch peer instead
(`reference_torch.TunedTI2VZero`: batch-2 guidance, SDPA, `torch.compile` per
`--torch-compile-mode`; compiled before the first round, its compile time printed apart).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import bench  # noqa: E402


def child(args):
    """Serve timing requests on stdin: each line -> `calls` timed runs, printed as JSON."""
    if args.child == "jax":
        s = bench.jax_setup(args)
        run = bench.jax_pair(s)[0] if args.what == "pair" else bench.jax_frame(s, args.what)[1]
    else:
        s = bench.torch_setup(args, tuned=args.peer == "tuned")
        run = bench.torch_pair(s) if args.what == "pair" else bench.torch_frame(s, args.what)
    t0 = time.perf_counter()
    run()  # compile / warm up
    print(f"ready {time.perf_counter() - t0:.1f}", flush=True)
    for _ in sys.stdin:
        print(json.dumps(bench.median_time(run, args.calls)[1]), flush=True)


def parser():
    ap = bench.parser()
    ap.description = __doc__.splitlines()[0]
    ap.add_argument("--what", default="pair", choices=("pair", "pixel", "latent"))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--peer", default="published", choices=("published", "tuned"),
                    help="the PyTorch side: the published loop or the tuned peer")
    return ap


def main():
    args = parser().parse_args()
    if args.child:
        return child(args)
    tmp = tempfile.TemporaryDirectory()
    if args.weights is None:
        args.weights = str(Path(tmp.name) / "w")
        bench.make_weights(args.config, Path(args.weights))
    procs = {}
    for impl in ("jax", "torch"):  # one at a time, so neither compiles while the other is timed
        cmd = [sys.executable, __file__, *sys.argv[1:], "--weights", args.weights, "--child", impl]
        procs[impl] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        while (line := procs[impl].stdout.readline()) and not line.startswith("ready"):
            pass
        if procs[impl].poll() is not None:
            raise SystemExit(f"the {impl} child stopped before it was ready")
        print(f"{impl}: compile/warm-up and first run {line.split()[1]} s", flush=True)
    what = "pair" if args.what == "pair" else (f"new frame ({args.what} slide, S={args.steps}, "
                                               f"R={args.resample})")
    times = {"jax": [], "torch": []}
    ratios = []
    for r in range(args.rounds):
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
    print(f"config {args.config}, {what}, {args.rounds} rounds x {args.calls} calls: jax median "
          f"{statistics.median(times['jax']):.3f} s, torch ({args.peer}) median {statistics.median(times['torch']):.3f} s; "
          f"per-round speed-up median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x)")
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}; machine: {bench.machine()}; command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
