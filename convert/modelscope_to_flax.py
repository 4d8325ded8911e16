#!/usr/bin/env python
"""Convert the original ModelScope text-to-video release into a ti2v-jax (Flax/orbax) checkpoint.

    python convert/modelscope_to_flax.py SRC DST [--dtype float32|bfloat16|float16] [--overwrite]

The same as `ti2v-jax convert --from modelscope SRC DST ...`.

SRC: the directory TI2V-Zero's published code loads (e.g. a snapshot of
damo-vilab/modelscope-damo-text-to-video-synthesis): configuration.json,
text2video_pytorch_model.pth, VQGAN_autoencoder.pth, open_clip_pytorch_model.bin.
DST gets the same layout as a converted diffusers checkpoint, with the CLIP tokenizer
(shipped with ti2v-jax, so no network) and the release's DDIM schedule.
Reading the .pth/.bin files needs torch.
"""

import sys

from ti2v_jax import cli


def main(argv=None) -> int:
    """`ti2v-jax convert --from modelscope` with these arguments (exit status 0, or 2 with the error)."""
    return cli.main(["convert", "--from", "modelscope", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
