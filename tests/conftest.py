"""Shared fixtures: one tiny, complete checkpoint for end-to-end tests.

`tiny_diffusers_dir`: a diffusers `TextToVideoSDPipeline` directory (unet, vae,
text_encoder, tokenizer, scheduler) with tiny random weights, every parameter
perturbed (diffusers zero-inits some layers). Written by diffusers'
`save_pretrained` when torch and diffusers are installed, otherwise by our own
numpy-only `export_diffusers` from random Flax models.
`tiny_converted_dir`: the same checkpoint converted by `convert_diffusers` (fp32).

Sizes: images 32x32 -> latents 16x16 (the tiny VAE downsamples 2x), 4 latent
channels, text contexts (B, 77, 32).
"""

from __future__ import annotations

import json

import pytest

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
IMAGE_SIZE = 32
LATENT_SIZE = 16


def perturb_torch_(module, seed: int, scale: float = 0.05):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def build_tiny_torch_pipeline(tokenizer_dir, seed: int = 0):
    """diffusers TextToVideoSDPipeline with the tiny configs and perturbed random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ti2v_jax.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    unet = perturb_torch_(UNet3DConditionModel(**TINY_UNET), seed + 1).eval()
    vae = perturb_torch_(AutoencoderKL(**TINY_VAE), seed + 2).eval()
    text = perturb_torch_(CLIPTextModel(CLIPTextConfig(**TINY_TEXT)), seed + 3).eval()
    sched = DDIMScheduler.from_config({k: v for k, v in SCHEDULER.items() if not k.startswith("_")})
    return TextToVideoSDPipeline(vae=vae, text_encoder=text, tokenizer=load_tokenizer(tokenizer_dir), unet=unet,
                                 scheduler=sched)


def write_tiny_diffusers(dst, tmp_dir, seed: int = 0):
    """Write the tiny checkpoint at `dst` (diffusers if available, else numpy-only export)."""
    from ti2v_jax.tokenizer import write_tiny_tokenizer

    tok_dir = write_tiny_tokenizer(tmp_dir / "tiny-tokenizer")
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return write_tiny_flax_export(dst, tok_dir, seed)
    build_tiny_torch_pipeline(tok_dir, seed).save_pretrained(str(dst))
    return dst


def write_tiny_flax_export(dst, tokenizer_dir, seed: int = 0):
    """Same configs, random Flax weights, written with `export_diffusers` (no torch)."""
    import numpy as np
    from flax import nnx

    from ti2v_jax.weights.components import COMPONENTS
    from ti2v_jax.weights.convert import export_diffusers

    configs = {"unet": TINY_UNET, "vae": TINY_VAE, "text_encoder": TINY_TEXT}
    rng = np.random.default_rng(seed)
    params = {}
    for name, cfg in configs.items():
        state = nnx.state(COMPONENTS[name].build(cfg, rngs=nnx.Rngs(seed)), nnx.Param)
        params[name] = {p: np.asarray(v.get_value()) + rng.normal(0, 0.05, v.get_value().shape).astype(np.float32)
                        for p, v in nnx.to_flat_state(state)}
    return export_diffusers(params, configs, dst, tokenizer_dir=tokenizer_dir, scheduler_config=dict(SCHEDULER))


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tmp_path_factory):
    """A tiny diffusers-layout text-to-video checkpoint (see module docstring)."""
    root = tmp_path_factory.mktemp("tiny_diffusers")
    dst = write_tiny_diffusers(root / "ckpt", root)
    assert json.loads((dst / "model_index.json").read_text())["unet"][1] == "UNet3DConditionModel"
    return dst


@pytest.fixture(scope="session")
def tiny_converted_dir(tiny_diffusers_dir, tmp_path_factory):
    """`tiny_diffusers_dir` converted to a ti2v-jax checkpoint (float32)."""
    from ti2v_jax.weights.convert import convert_diffusers

    dst = tmp_path_factory.mktemp("tiny_converted") / "ckpt"
    convert_diffusers(tiny_diffusers_dir, dst)
    return dst
