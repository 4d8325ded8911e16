"""XLA:CPU against PyTorch, kernel by kernel, at the U-Net's and VAE's shapes: where a CPU kind loses.

    python benchmarks/cpu_kernels.py [--sets package,ynn_conv,none] [--repeats 7]

For each 3x3 convolution shape (the `small` configs' U-Net levels and the VAE's 256x256 level) and
the level-0 spatial self-attention (32 items x 1,024 tokens x 32 channels, as a guidance pair
runs it): XLA compiled with each compiler option set of `ab_unet.OPTION_SETS` (`package` is
ti2v-jax's), ti2v-jax's attention as the U-Net calls it, and PyTorch (conv2d in NCHW and
channels_last; SDPA), 2 threads, float32. Prints the median time and GFLOP/s per kernel, and the
machine line. Meant for a CPU kind where the end-to-end ratio drops (an Intel Xeon in issue 22):
it tells whether the convolutions, the attention or neither is behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "gpu"), str(HERE.parent)]
from ab_unet import OPTION_SETS, option_set  # noqa: E402
from bench import machine  # noqa: E402
from profile_unet import timed  # noqa: E402

from ti2v_jax.models import layers  # noqa: E402

# (frames, height, width, channels in, channels out): U-Net levels 0-3 of `small`, VAE levels
CONVS = [(16, 32, 32, 32, 32), (16, 16, 16, 64, 64), (16, 8, 8, 128, 128), (16, 4, 4, 128, 128),
         (1, 256, 256, 32, 32), (1, 128, 128, 32, 32)]
ATTENTION = (32, 1024, 32)  # items (16 frames x 2 contexts), tokens, channels (one 32-wide head)


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="package,ynn_conv,none", help=f"comma list of: {', '.join(OPTION_SETS)}")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    sets = a.sets.split(",")
    if unknown := set(sets) - set(OPTION_SETS):
        ap.error(f"unknown --sets {sorted(unknown)}; choose from {', '.join(OPTION_SETS)}")
    import torch

    torch.set_num_threads(2)
    print(f"machine: {machine()}; jax {jax.__version__}, torch {torch.__version__}; float32, ms (GFLOP/s)")
    print("| kernel | " + " | ".join(f"XLA {s}" for s in sets) + " | torch NCHW | torch channels_last |")
    print("|---" * (len(sets) + 3) + "|")
    cell = lambda s, flops: f"{s * 1e3:.2f} ({flops / s / 1e9:.0f})"  # noqa: E731
    for n, h, w_, ci, co in CONVS:
        x = jax.random.normal(jax.random.key(0), (n, h, w_, ci))
        w = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, ci, co))
        flops = 2 * n * h * w_ * ci * co * 9
        row = []
        for s in sets:
            f = jax.jit(conv, compiler_options=option_set(s) or None)
            row.append(cell(timed(lambda: f(x, w).block_until_ready(), a.repeats), flops))
        tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
        tw = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()
        txc = tx.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            for t in (tx, txc):
                row.append(cell(timed(lambda t=t: torch.nn.functional.conv2d(t, tw, padding=1), a.repeats), flops))
        print(f"| conv 3x3, {n}x{h}x{w_}, {ci}->{co} | " + " | ".join(row) + " |")
    b, t, c = ATTENTION
    q, k, v = (jax.random.normal(jax.random.key(i), (b, t, c)) for i in range(3))
    flops = 4 * b * t * t * c
    row = []
    for s in sets:
        f = jax.jit(lambda q, k, v: layers.attention(q, k, v, 1), compiler_options=option_set(s) or None)
        row.append(cell(timed(lambda: f(q, k, v).block_until_ready(), a.repeats), flops))
    tq, tk, tv = (torch.from_numpy(np.array(z))[:, None] for z in (q, k, v))
    with torch.no_grad():
        sdpa = timed(lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv), a.repeats)
    print(f"| attention, {b} x {t} tokens x {c} (ti2v-jax's CPU kernel; torch SDPA) | " + " | ".join(row)
          + f" | {cell(sdpa, flops)} | - |")


if __name__ == "__main__":
    main()
