"""Long video: N > K-1 new frames; repeat-and-slide simply keeps sliding.

    python examples/long_video.py --model CKPT --image IMG --prompt TEXT --frames 47 --out long.mp4

`--slide latent` slides the latents instead of decoding and re-encoding the queue
(cheaper per frame; a different algorithm from the published one).
"""

import argparse
from pathlib import Path

from ti2v_jax.io import save_video
from ti2v_jax.pipeline import TI2VZeroPipeline

HERE = Path(__file__).parent

p = argparse.ArgumentParser()
p.add_argument("--model", default=None)
p.add_argument("--image", default=str(HERE / "start_red_circle.png"))
p.add_argument("--prompt", default="a red circle moving right")
p.add_argument("--frames", type=int, default=31, help="new frames N (any number: one compiled program)")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--resample", type=int, default=2)
p.add_argument("--slide", choices=("pixel", "latent"), default="pixel")
p.add_argument("--out", default="long_video.gif")
a = p.parse_args()

pipe = TI2VZeroPipeline.from_pretrained(a.model)
video = pipe(a.image, a.prompt, num_new_frames=a.frames, steps=a.steps, resample=a.resample,
             slide=a.slide, progress=True).frames
save_video(video, a.out, fps=8)
print(f"{a.out}: {video.shape[0]} frames (the model's window is {pipe.num_frames})")
