#!/usr/bin/env python
"""Convert a diffusers text-to-video checkpoint into a ti2v-jax (Flax/orbax) checkpoint.

    python convert/diffusers_to_flax.py SRC DST [--dtype float32|bfloat16|float16] [--overwrite]

SRC: a diffusers pipeline directory (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/), e.g. a local snapshot of ali-vilab/text-to-video-ms-1.7b.
"""

from __future__ import annotations

import argparse
import sys

from ti2v_jax.weights.convert import convert_checkpoint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="diffusers pipeline directory")
    p.add_argument("dst", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="stored parameter dtype (default: float32)")
    p.add_argument("--variant", default=None, help="read weight files of this variant first, e.g. fp16")
    p.add_argument("--from", dest="source_format", default="diffusers", choices=["auto", "diffusers", "modelscope"],
                   help="source layout (default: diffusers; 'auto' also recognises the original ModelScope release)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = p.parse_args(argv)
    report = convert_checkpoint(args.src, args.dst, args.dtype, source_format=args.source_format,
                                overwrite=args.overwrite, variant=args.variant)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
