"""ti2v-jax: TI2V-Zero (zero-shot image conditioning of text-to-video diffusion) in JAX/Flax."""

__version__ = "0.1.0"
