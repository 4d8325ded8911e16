"""`ti2v-jax plan` for ms-1.7b shapes on several targets, one after the other: the
"compiled ahead, no chip" table of benchmarks/RESULTS.md.

    JAX_PLATFORMS=cpu python benchmarks/plan_targets.py --targets v5e:2x4,v6e:2x2 [--batch-per-chip 1|auto]

Per target it writes benchmarks/out/plan_<target>_b<B>.json (the report) and .txt (its text).
bf16 U-Net, fp32 VAE and text encoder, S=10, R=4, g=9, K=16, 256x256, 15 new frames, pixel
slide. Full size: tens of minutes of compiling per target on a 2-core host.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ti2v_jax import plan  # noqa: E402
from ti2v_jax.settings import SamplerSettings  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="v5e:2x4")
    ap.add_argument("--batch-per-chip", default="1")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--resample", type=int, default=4)
    a = ap.parse_args()
    s = SamplerSettings(steps=a.steps, resample=a.resample, guidance=9.0, num_new_frames=15, height=256, width=256)
    OUT.mkdir(exist_ok=True)
    for name in a.targets.split(","):
        t = time.time()
        b = a.batch_per_chip if a.batch_per_chip == "auto" else int(a.batch_per_chip)
        r = plan.plan(name, configs=plan.ms17b_configs(), dtype="bfloat16", vae_text_dtype="float32",
                      batch_per_chip=b, settings=s, log=lambda line: print(line, flush=True))
        stem = OUT / f"plan_{name.replace(':', '_')}_b{a.batch_per_chip}"
        stem.with_suffix(".json").write_text(json.dumps(r.as_dict(), indent=1, default=str))
        stem.with_suffix(".txt").write_text(r.text() + f"\n  (whole plan incl. unit programs: {time.time() - t:.0f} s)\n")
        print(r.text(), flush=True)


if __name__ == "__main__":
    main()
