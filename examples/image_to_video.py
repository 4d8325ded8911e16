"""Animate one image with TI2V-Zero.

    python examples/image_to_video.py                                   # shipped default model
    python examples/image_to_video.py --model CKPT --image cat.png --prompt "a cat running" --out cat.mp4

CKPT: a converted directory (`ti2v-jax convert`), a diffusers-layout directory
(e.g. ModelScope's text-to-video-ms-1.7b), or `ti2v-jax make-tiny` output.
"""

import argparse
from pathlib import Path

from ti2v_jax.io import save_video
from ti2v_jax.pipeline import TI2VZeroPipeline

HERE = Path(__file__).parent

p = argparse.ArgumentParser()
p.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
p.add_argument("--image", default=str(HERE / "start_red_circle.png"))
p.add_argument("--prompt", default="a red circle moving right")
p.add_argument("--out", default="image_to_video.gif")
p.add_argument("--frames", type=int, default=15, help="new frames N")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--resample", type=int, default=4)
p.add_argument("--dtype", default="float32")
a = p.parse_args()

pipe = TI2VZeroPipeline.from_pretrained(a.model, dtype=a.dtype)
video = pipe(a.image, a.prompt, num_new_frames=a.frames, steps=a.steps,
             resample=a.resample, seed=0, progress=True).frames
save_video(video, a.out, fps=8)
print(f"{a.out}: {video.shape[0]} frames of {video.shape[1]}x{video.shape[2]}")
