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

from helpers import perturb_

from ti2v_jax.tiny import SCHEDULER, TINY_TEXT, TINY_UNET, TINY_VAE  # one definition

IMAGE_SIZE = 32
LATENT_SIZE = 16


def build_tiny_torch_pipeline(tokenizer_dir, seed: int = 0):
    """diffusers TextToVideoSDPipeline with the tiny configs and perturbed random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ti2v_jax.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    unet = perturb_(UNet3DConditionModel(**TINY_UNET), 0.05, seed + 1).eval()
    vae = perturb_(AutoencoderKL(**TINY_VAE), 0.05, seed + 2).eval()
    text = perturb_(CLIPTextModel(CLIPTextConfig(**TINY_TEXT)), 0.05, seed + 3).eval()
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
    """Same configs, random Flax weights, written with `ti2v-jax make-tiny`'s code (no torch)."""
    from ti2v_jax.tiny import make_tiny

    return make_tiny(dst, seed=seed)


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
