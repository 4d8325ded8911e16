"""ti2v-jax: TI2V-Zero (zero-shot image conditioning of text-to-video diffusion) in JAX/Flax."""

__version__ = "0.1.0"

from pathlib import Path as _Path

# ModelScope text-to-video-ms-1.7b's component configs (unet, vae, text_encoder, scheduler),
# for building full-size random-weight models (tests, benchmarks) without the checkpoint.
MS17B_CONFIGS = _Path(__file__).resolve().parent / "assets" / "configs" / "text-to-video-ms-1.7b"
