#!/usr/bin/env python
"""Convert a diffusers text-to-video checkpoint into a ti2v-jax (Flax/orbax) checkpoint.

    python convert/diffusers_to_flax.py SRC DST [--dtype float32|bfloat16|float16] [--overwrite]

The same as `ti2v-jax convert --from diffusers SRC DST ...`.

SRC: a diffusers pipeline directory (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/), e.g. a local snapshot of ali-vilab/text-to-video-ms-1.7b.
"""

import sys

from ti2v_jax import cli


def main(argv=None) -> int:
    """`ti2v-jax convert --from diffusers` with these arguments (exit status 0, or 2 with the error)."""
    return cli.main(["convert", "--from", "diffusers", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
