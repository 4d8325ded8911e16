"""Video prediction: continue a clip from M given frames (M <= K-1).

    python examples/video_prediction.py --model CKPT --frames-dir clip/ --prompt "waves" --out more.gif

Without --frames-dir, the given frames are cut from a video made by the model
itself from the example image (so the script runs out of the box).
"""

import argparse
from pathlib import Path

from ti2v_jax.io import read_video, save_video
from ti2v_jax.pipeline import TI2VZeroPipeline

HERE = Path(__file__).parent

p = argparse.ArgumentParser()
p.add_argument("--model", default=None)
p.add_argument("--frames-dir", default=None, help="a folder of frames (PNG, sorted by name) or a video file")
p.add_argument("--given", type=int, default=4, help="how many of its frames to condition on (M)")
p.add_argument("--prompt", default="a red circle moving right")
p.add_argument("--new", type=int, default=8, help="frames to predict (N)")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--out", default="video_prediction.gif")
a = p.parse_args()

pipe = TI2VZeroPipeline.from_pretrained(a.model)
if a.frames_dir:
    frames = list(read_video(a.frames_dir))
else:
    frames = list(pipe(str(HERE / "start_red_circle.png"), a.prompt, num_new_frames=a.given - 1,
                       steps=a.steps, progress=True).frames)
given = frames[:a.given]
video = pipe(given, a.prompt, given_frames_as_video=True, num_new_frames=a.new, steps=a.steps, seed=1,
             progress=True).frames
save_video(video, a.out, fps=8)
print(f"{a.out}: {len(given)} given + {a.new} predicted frames")
