"""ti2v-jax: TI2V-Zero (zero-shot image conditioning of text-to-video diffusion) in JAX/Flax.

    from ti2v_jax import TI2VZeroPipeline, SamplerSettings, load, sampling
    pipe = TI2VZeroPipeline.from_pretrained()          # the shipped default model
    video = pipe("start.png", "a red circle moving right").frames

The names below are imported on first use, so `import ti2v_jax` stays light.
"""

__version__ = "0.1.0"

from pathlib import Path as _Path

# ModelScope text-to-video-ms-1.7b's component configs (unet, vae, text_encoder, scheduler),
# for building full-size random-weight models (tests, benchmarks) without the checkpoint.
MS17B_CONFIGS = _Path(__file__).resolve().parent / "assets" / "configs" / "text-to-video-ms-1.7b"

_EXPORTS = {
    "TI2VZeroPipeline": ("ti2v_jax.pipeline", "TI2VZeroPipeline"),
    "TI2VZeroPipelineOutput": ("ti2v_jax.pipeline", "TI2VZeroPipelineOutput"),
    "DEFAULT_MODEL": ("ti2v_jax.pipeline", "DEFAULT_MODEL"),
    "SamplerSettings": ("ti2v_jax.settings", "SamplerSettings"),
    "load": ("ti2v_jax.loading", "load"),
    "Components": ("ti2v_jax.loading", "Components"),
    "save_video": ("ti2v_jax.io", "save_video"),
    "load_image": ("ti2v_jax.io", "load_image"),
    "sampling": ("ti2v_jax.sampling", None),
    "errors": ("ti2v_jax.errors", None),
}
__all__ = ["MS17B_CONFIGS", "__version__", *_EXPORTS]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ti2v_jax' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)
