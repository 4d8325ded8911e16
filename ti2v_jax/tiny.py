"""A tiny random-weight checkpoint in diffusers layout, for trying the tool and for tests.

Its videos are noise: the weights are random. Sizes: 32x32 images, 16x16x4 latents
(the VAE downsamples 2x), text contexts (B, 77, 32), 16 frames by default.

The weights are drawn on the host by numpy, one seeded generator per network, in the
sorted order of the parameter names: the same seed gives the same bytes on every
machine and run, and nothing is compiled (the models are only traced, abstractly, for
their parameter shapes).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from ti2v_jax.errors import InputError

TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=1,
    down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"], up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"],
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
)
TINY_VAE = dict(
    sample_size=32, in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 64],
    layers_per_block=1, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
)
TINY_TEXT = dict(
    vocab_size=530, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=528, eos_token_id=2,
    pad_token_id=1, projection_dim=32,
)
# ModelScope text-to-video-ms-1.7b's scheduler.
SCHEDULER = dict(
    _class_name="DDIMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False,
    steps_offset=1, thresholding=False,
)
TINY_CONFIGS = {"unet": TINY_UNET, "vae": TINY_VAE, "text_encoder": TINY_TEXT}


PERTURB_SCALE = 0.05


def random_params(name: str, config: dict, seed: int, *, scale: float = PERTURB_SCALE) -> dict:
    """{flax path: float32 array} for network `name`: a usual init, then every entry perturbed.

    Kernels ~ N(0, 1/fan_in) (LeCun), embeddings ~ N(0, 0.02^2), norm scales 1, biases 0;
    then N(0, scale^2) is added everywhere, so no zero-initialised path stays inert. One
    `np.random.Generator` per network, seeded by (seed, network), draws the parameters in
    sorted path order: the result depends on nothing but these arguments.
    """
    from ti2v_jax.weights.checkpoint import param_shapes
    from ti2v_jax.weights.components import COMPONENTS

    shapes = param_shapes(COMPONENTS[name].abstract(config))
    rng = np.random.default_rng([int(seed), list(TINY_CONFIGS).index(name) if name in TINY_CONFIGS else 99])
    out = {}
    for path in sorted(shapes, key=lambda p: tuple(str(k) for k in p)):
        shape, leaf = shapes[path], str(path[-1])
        if leaf == "kernel":
            base = rng.standard_normal(shape) / math.sqrt(max(1, math.prod(shape[:-1])))
        elif leaf == "embedding":
            base = 0.02 * rng.standard_normal(shape)
        elif leaf == "scale":
            base = np.ones(shape)
        else:
            base = np.zeros(shape)
        out[path] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
    return out


def make_tiny(dst, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny random checkpoint (diffusers layout, safetensors) to `dst`; numpy only, no torch.

    The same `seed` gives the same bytes every time. An existing `dst` is refused at once
    (before any work) unless `overwrite` (the command's `--overwrite`).
    """
    from ti2v_jax.tokenizer import write_tiny_tokenizer
    from ti2v_jax.weights.convert import export_diffusers

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise InputError(f"{dst} already exists; choose another folder or pass --overwrite "
                         f"(overwrite=True) to replace it")
    params = {name: random_params(name, cfg, seed) for name, cfg in TINY_CONFIGS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tok = write_tiny_tokenizer(Path(tmp) / "tokenizer")
        return export_diffusers(params, TINY_CONFIGS, dst, tokenizer_dir=tok, scheduler_config=SCHEDULER,
                                overwrite=overwrite)
