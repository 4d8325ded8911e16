"""Shared fixtures: tiny, complete checkpoints for end-to-end tests.

A parity test must compare ti2v-jax with PyTorch, never with itself, so the reference
checkpoint is only ever written by diffusers:

`tiny_diffusers_dir`: a diffusers `TextToVideoSDPipeline` directory (unet, vae,
text_encoder, tokenizer, scheduler) written by diffusers' own `save_pretrained` from
PyTorch models with the tiny configs and perturbed random weights (diffusers zero-inits
some layers). Without torch or diffusers, every test that asks for it SKIPS, saying why.
`tiny_export_dir`: the same configs in the same layout, with random Flax weights, written
by ti2v-jax's own numpy-only exporter (`ti2v_jax.tiny.make_tiny`): for tests that need
*some* tiny checkpoint in diffusers layout, never as a reference.
`tiny_diffusers_layout_dir`: `tiny_diffusers_dir` where torch and diffusers are installed,
else `tiny_export_dir` (conversion, CLI and pipeline tests that only need the layout).
`tiny_converted_dir`: `tiny_diffusers_layout_dir` converted by `convert_diffusers` (fp32):
with torch, the very network the parity tests compare against; without, the numpy-only
one, so pipeline, CLI and batch tests still run.

Sizes: images 32x32 -> latents 16x16 (the tiny VAE downsamples 2x), 4 latent
channels, text contexts (B, 77, 32).

`TI2V_TESTS_WITHOUT_TORCH=1` hides torch and diffusers from the test session (their
imports fail as if they were not installed), to check that path where they are.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys

# The tests run on this host's CPU, and so do their subprocesses; with libtpu installed (the
# tpu extra) JAX would otherwise try to start a TPU backend in every process. Set before
# anything imports jax (which reads it once, at import).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from helpers import perturb_  # noqa: E402

from ti2v_jax.tiny import SCHEDULER, TINY_TEXT, TINY_UNET, TINY_VAE  # noqa: E402 - one definition

IMAGE_SIZE = 32
LATENT_SIZE = 16


if os.environ.get("TI2V_TESTS_WITHOUT_TORCH", "") not in ("", "0"):
    for _name in ("torch", "diffusers", "torchvision"):
        if sys.modules.get(_name) is not None:
            raise RuntimeError(f"TI2V_TESTS_WITHOUT_TORCH: {_name} was imported before tests/conftest.py")
        sys.modules[_name] = None  # `import torch` now raises ImportError


@functools.cache
def torch_reference_missing() -> str | None:
    """Why diffusers cannot write the reference checkpoint here, or None when it can."""
    for name in ("torch", "diffusers"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            return (f"{name} is not importable ({e}): the reference checkpoint must be written by diffusers, "
                    "not by ti2v-jax itself")
    return None


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
    """Write the tiny reference checkpoint at `dst` with diffusers (torch and diffusers required)."""
    from ti2v_jax.tokenizer import write_tiny_tokenizer

    tok_dir = write_tiny_tokenizer(tmp_dir / "tiny-tokenizer")
    build_tiny_torch_pipeline(tok_dir, seed).save_pretrained(str(dst))
    return dst


def _check_layout(dst):
    assert json.loads((dst / "model_index.json").read_text())["unet"][1] == "UNet3DConditionModel"
    return dst


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tmp_path_factory):
    """The tiny checkpoint written by diffusers (see module docstring); skips without torch/diffusers."""
    reason = torch_reference_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("tiny_diffusers")
    return _check_layout(write_tiny_diffusers(root / "ckpt", root))


@pytest.fixture(scope="session")
def tiny_export_dir(tmp_path_factory):
    """The tiny checkpoint in diffusers layout written by ti2v-jax's numpy-only `make_tiny` (not a reference)."""
    from ti2v_jax.tiny import make_tiny

    return _check_layout(make_tiny(tmp_path_factory.mktemp("tiny_export") / "ckpt", seed=0))


@pytest.fixture(scope="session")
def tiny_diffusers_layout_dir(request):
    """`tiny_diffusers_dir` if torch and diffusers are installed, else `tiny_export_dir`: for layout-only tests."""
    return request.getfixturevalue("tiny_export_dir" if torch_reference_missing() else "tiny_diffusers_dir")


@pytest.fixture(scope="session")
def tiny_converted_dir(tiny_diffusers_layout_dir, tmp_path_factory):
    """`tiny_diffusers_layout_dir` converted to a ti2v-jax checkpoint (float32)."""
    from ti2v_jax.weights.convert import convert_diffusers

    dst = tmp_path_factory.mktemp("tiny_converted") / "ckpt"
    convert_diffusers(tiny_diffusers_layout_dir, dst)
    return dst
