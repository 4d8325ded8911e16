"""Write the example start images (examples/start_*.png) and sample GIFs made by the default model (docs/samples/).

    python train/make_samples.py            # full method: DDPM inversion, R = 4, S = 10, 7 new frames

The start images are rendered by ti2v_jax.toy.synthetic at the model's native 32x32; the
GIFs are the start image followed by the 7 generated frames (K - 1 = 7: the distance the
training clips travel), enlarged 4x (nearest) so they can be seen.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ti2v_jax import io  # noqa: E402
from ti2v_jax.pipeline import TI2VZeroPipeline  # noqa: E402
from ti2v_jax.toy import synthetic  # noqa: E402

# (shape, colour, centre, prompt direction): each start leaves room to move that way.
CASES = [
    ("circle", "red", (9.0, 16.0), "right"),
    ("square", "blue", (23.0, 15.0), "left"),
    ("triangle", "yellow", (16.0, 23.0), "up"),
    ("circle", "green", (15.0, 9.0), "down"),
]


def main():
    (ROOT / "examples").mkdir(exist_ok=True)
    (ROOT / "docs" / "samples").mkdir(parents=True, exist_ok=True)
    paths, prompts = [], []
    for shape, color, center, direction in CASES:
        img = synthetic.render_image(shape, color, center, radius=6.0, background=30)
        path = ROOT / "examples" / f"start_{color}_{shape}.png"
        from PIL import Image
        Image.fromarray(img).save(path)
        paths.append(str(path))
        prompts.append(synthetic.caption(color, shape, direction))
    pipe = TI2VZeroPipeline.from_pretrained()
    videos = pipe(paths, prompts, num_new_frames=synthetic.NUM_FRAMES - 1, seed=0).frames
    for (shape, color, _, direction), video in zip(CASES, np.asarray(videos)):
        big = video.repeat(4, axis=1).repeat(4, axis=2)
        out = ROOT / "docs" / "samples" / f"{color}_{shape}_{direction}.gif"
        io.save_video(big, out, fps=4)
        print("wrote", out)


if __name__ == "__main__":
    main()
