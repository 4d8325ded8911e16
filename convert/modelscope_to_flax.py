#!/usr/bin/env python
"""Convert the original ModelScope text-to-video release into a ti2v-jax (Flax/orbax) checkpoint.

    python convert/modelscope_to_flax.py SRC DST [--dtype float32|bfloat16|float16] [--overwrite]

SRC: the directory TI2V-Zero's published code loads (e.g. a snapshot of
damo-vilab/modelscope-damo-text-to-video-synthesis): configuration.json,
text2video_pytorch_model.pth, VQGAN_autoencoder.pth, open_clip_pytorch_model.bin.
DST gets the same layout as a converted diffusers checkpoint, with the CLIP tokenizer
(shipped with ti2v-jax, so no network) and the release's DDIM schedule.
Reading the .pth/.bin files needs torch.
"""

from __future__ import annotations

import argparse
import sys

from ti2v_jax.weights.modelscope import convert_modelscope


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="original ModelScope directory (configuration.json, *.pth, *.bin)")
    p.add_argument("dst", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="stored parameter dtype (default: float32)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = p.parse_args(argv)
    try:
        report = convert_modelscope(args.src, args.dst, args.dtype, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
