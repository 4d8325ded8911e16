"""A batch of videos over every device, and a check that it equals the one-device result.

    python examples/many_devices.py --model CKPT
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/many_devices.py   # try it on a CPU

On a TPU pod slice, run the same script on every host with --distributed (it calls
ti2v_jax.distributed.initialize_distributed first); each host passes its own items. For big jobs
use `ti2v-jax batch` (README: "Batch jobs").
"""

import argparse
from pathlib import Path

import jax
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--model", default=None)
p.add_argument("--parallel", choices=("mesh", "pmap"), default="mesh")
p.add_argument("--batch", type=int, default=None, help="videos (default: 2 per device)")
p.add_argument("--steps", type=int, default=4)
p.add_argument("--frames", type=int, default=7, help="new frames N")
p.add_argument("--out-prefix", default="many_devices", help="GIFs PREFIX_<process>_<i>.gif")
p.add_argument("--distributed", action="store_true")
a = p.parse_args()
if a.distributed:
    from ti2v_jax.distributed import initialize_distributed

    initialize_distributed(True)

from ti2v_jax.io import save_video  # noqa: E402  (after initialize_distributed)
from ti2v_jax.pipeline import TI2VZeroPipeline  # noqa: E402

HERE = Path(__file__).parent
pipe = TI2VZeroPipeline.from_pretrained(a.model)
n = a.batch or 2 * jax.local_device_count()
colours = ["red", "green", "blue", "yellow"]
prompts = [f"a {colours[i % 4]} circle moving {['left', 'right', 'up', 'down'][i % 4]}" for i in range(n)]
images = [str(HERE / "start_red_circle.png")] * n
seeds = [100 * jax.process_index() + i for i in range(n)]
kw = dict(num_new_frames=a.frames, steps=a.steps, resample=2, seed=seeds)
videos = pipe(images, prompts, parallel=a.parallel, **kw).frames
print(f"{jax.device_count()} devices ({jax.process_count()} processes): {videos.shape}")
if jax.process_count() == 1:
    ref = pipe(images, prompts, parallel="none", **kw).frames
    print("max |multi-device - one device| (uint8 levels):", int(np.abs(videos.astype(int) - ref.astype(int)).max()))
for i, v in enumerate(videos[:4]):
    save_video(v, f"{a.out_prefix}_{jax.process_index()}_{i}.gif")
