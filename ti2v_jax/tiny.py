"""A tiny random-weight checkpoint in diffusers layout, for trying the tool and for tests.

Its videos are noise: the weights are random. Sizes: 32x32 images, 16x16x4 latents
(the VAE downsamples 2x), text contexts (B, 77, 32), 16 frames by default.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
from flax import nnx

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


def perturb(model: nnx.Module, key, scale: float = 0.05) -> nnx.Module:
    """Add N(0, scale^2) to every parameter, so no zero-initialised path stays inert."""
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    leaves = [v + scale * jax.random.normal(k, v.shape, v.dtype) for v, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(tree, leaves))
    return model


def make_tiny(dst, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny random checkpoint (diffusers layout, safetensors) to `dst`; numpy only, no torch."""
    from ti2v_jax.tokenizer import write_tiny_tokenizer
    from ti2v_jax.weights.components import COMPONENTS
    from ti2v_jax.weights.convert import export_diffusers

    key = jax.random.key(seed)
    models = {}
    for i, (name, cfg) in enumerate(TINY_CONFIGS.items()):
        model = COMPONENTS[name].build(cfg, rngs=nnx.Rngs(seed + i))
        models[name] = perturb(model, jax.random.fold_in(key, i))
    with tempfile.TemporaryDirectory() as tmp:
        tok = write_tiny_tokenizer(Path(tmp) / "tokenizer")
        return export_diffusers(models, TINY_CONFIGS, dst, tokenizer_dir=tok, scheduler_config=SCHEDULER,
                                overwrite=overwrite)
