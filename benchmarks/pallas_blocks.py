"""Pallas TPU flash-attention block sizes for the ms-1.7b attention shapes, from compiles.

    JAX_PLATFORMS=cpu python benchmarks/pallas_blocks.py [--target v5e:2x2] [--batch-per-chip 1]

For every attention call of the 1.7B U-Net (and VAE) at 256x256 that runs the Pallas kernel
(`models.attention.attention_kernel`), compile the kernel alone for one chip of the target by
Mosaic, with each (block_q, block_k) of 128..1024 dividing the sequence, and record:
  - whether Mosaic compiles it (VMEM is what bounds block sizes; no chip needed to know),
  - the compiled program's FLOPs and bytes accessed (XLA's cost analysis of the Mosaic call),
  - the HBM traffic of the kernel's schedule: q and the output once, k and v once per block
    of queries (the kernel streams k/v for each q block): (1 + 1 + 2 * Tq / block_q) x size,
  - the roofline bound of that traffic and the FLOPs on the chip's datasheet figures.
The row marked "<- chosen" is `models.attention.pallas_blocks`' choice. Prints a table and
writes benchmarks/out/pallas_blocks_<target>.json. Bounds, not timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental.pallas.ops.tpu import flash_attention as fa  # noqa: E402

from ti2v_jax import plan  # noqa: E402
from ti2v_jax.models.attention import pallas_blocks  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
BLOCKS = (128, 256, 512, 1024)


def shapes(batch_per_chip: int, num_frames: int = 16):
    """(name, batch, heads, q_len, kv_len, head_dim, dtype) of the Pallas calls at 256x256:
    the U-Net's spatial self-attention (guided pair: 2 x frames per item) and the VAE's mid
    attention (one frame per call, fp32)."""
    b = 2 * num_frames * batch_per_chip
    return [("unet self-attn 32x32", b, 5, 1024, 1024, 64, jnp.bfloat16),
            ("unet self-attn 16x16", b, 10, 256, 256, 64, jnp.bfloat16),
            ("vae mid-attn 32x32", num_frames * batch_per_chip, 1, 1024, 1024, 512, jnp.float32)]


def compile_one(device, b, h, tq, tk, d, dtype, bq, bk):
    sizes = fa.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1)
    sh = jax.sharding.SingleDeviceSharding(device)
    args = [jax.ShapeDtypeStruct((b, h, t, d), dtype, sharding=sh) for t in (tq, tk, tk)]
    t0 = time.time()
    try:
        c = jax.jit(lambda q, k, v: fa.flash_attention(q, k, v, sm_scale=d ** -0.5, block_sizes=sizes)
                    ).lower(*args).compile()
    except Exception as e:  # noqa: BLE001 - Mosaic's refusal, whatever its type
        return dict(compiles=False, why=str(e).strip().splitlines()[0][:200], compile_s=time.time() - t0)
    ca = c.cost_analysis() or {}
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return dict(compiles=True, compile_s=time.time() - t0, flops=float(ca.get("flops", 0)),
                bytes_accessed=float(ca.get("bytes accessed", 0)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="v5e:2x2")
    ap.add_argument("--batch-per-chip", type=int, default=1)
    a = ap.parse_args()
    target = plan.resolve_target(a.target)
    chip, device = target.chip, target.devices[0]
    rows = []
    for name, b, h, tq, tk, d, dtype in shapes(a.batch_per_chip):
        size = b * h * d * jnp.dtype(dtype).itemsize
        flops = 4 * b * h * tq * tk * d
        chosen = pallas_blocks(tq, tk, d, jnp.dtype(dtype).itemsize)
        for bq in (x for x in BLOCKS if tq % x == 0):
            for bk in (x for x in BLOCKS if tk % x == 0):
                r = compile_one(device, b, h, tq, tk, d, dtype, bq, bk)
                traffic = (2 * tq + 2 * tk * (tq // bq)) * size
                bound = max(flops / (chip.bf16_tflops * 1e12), traffic / (chip.hbm_gbps * 1e9))
                rows.append(dict(call=name, batch=b, heads=h, q_len=tq, kv_len=tk, head_dim=d,
                                 dtype=jnp.dtype(dtype).name, block_q=bq, block_k=bk, model_flops=flops,
                                 schedule_bytes=traffic, bound_us=bound * 1e6, chosen=(bq, bk) == chosen, **r))
                mark = "  <- chosen" if (bq, bk) == chosen else ""
                print(f"{name:22s} bq {bq:4d} bk {bk:4d}  "
                      + (f"compiles in {r['compile_s']:.1f} s, XLA cost: {r['flops'] / 1e9:.1f} GFLOP "
                         f"{r['bytes_accessed'] / 2**20:.0f} MiB; schedule {traffic / 2**20:.0f} MiB, "
                         f"bound {bound * 1e6:.0f} us" if r["compiles"] else f"refused: {r['why']}") + mark, flush=True)
    OUT.mkdir(exist_ok=True)
    path = OUT / f"pallas_blocks_{a.target.replace(':', '_')}.json"
    path.write_text(json.dumps(dict(target=a.target, chip=chip.name, rows=rows), indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
