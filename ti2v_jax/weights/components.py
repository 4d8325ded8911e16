"""Which networks a checkpoint holds, and how each one is built and named.

One row per model component of a text-to-video pipeline: the Flax class (imported
lazily, so this table costs nothing to import), the PyTorch classes a diffusers
`model_index.json` may name for it, and its file names. The PyTorch -> Flax key
rules (`TORCH_RENAMES`, `TORCH_IGNORE`) live beside each model, in its module.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import rnglib


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    name: str                    # directory name in diffusers' layout, e.g. "unet"
    module: str                  # Python module holding the Flax class
    class_name: str              # Flax class, same name as the PyTorch one
    torch_classes: tuple         # PyTorch class names accepted in model_index.json / config.json
    weights_stem: str            # what `export_diffusers` names the safetensors file
    config_name: str = "config.json"

    def load_module(self):
        return importlib.import_module(self.module)

    @property
    def model_class(self) -> Callable:
        return getattr(self.load_module(), self.class_name)

    @property
    def renames(self) -> list:
        return list(getattr(self.load_module(), "TORCH_RENAMES", []))

    @property
    def ignore(self) -> list:
        return list(getattr(self.load_module(), "TORCH_IGNORE", []))

    def build(self, config: dict, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs=None, attention=None):
        """A concrete model (random parameters).

        attention: the attention implementation the model is built with ("xla", "cudnn", ...;
        None: the models' automatic choice per platform). It is part of the model spec, so it
        lands in the graphdef and hence in the key of every compiled program.
        """
        kwargs = {} if attention is None else {"attention": attention}
        return self.model_class(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs or nnx.Rngs(0), **kwargs)

    def abstract(self, config: dict, *, dtype=jnp.float32, param_dtype=jnp.float32, attention=None):
        """The model with ShapeDtypeStructs for arrays: no memory, no compute."""
        return nnx.eval_shape(lambda: self.build(config, dtype=dtype, param_dtype=param_dtype,
                                                 rngs=_host_counter_rngs(0), attention=attention))


def _host_counter_rngs(seed: int) -> nnx.Rngs:
    """nnx.Rngs whose call counters are numpy, for tracing a constructor under `nnx.eval_shape`.

    With jax counters every `rngs.params()` inside the trace updates a traced Variable,
    and flax's `Variable.set_value` then reads `tracer.sharding`, whose error message
    walks the whole jaxpr (jax 0.10 / flax 0.12): quadratic in the model's size. Host
    counters keep the trace linear. The keys are the same either way.
    """
    rngs = nnx.Rngs(seed)
    try:
        for stream in vars(rngs).values():
            if isinstance(stream, rnglib.RngStream):
                shape = stream.count.get_raw_value().shape
                stream.count.set_raw_value(np.zeros(shape, np.uint32))
    except AttributeError:  # another flax: fall back to the plain (slower) Rngs
        return nnx.Rngs(seed)
    return rngs


COMPONENTS: dict[str, ComponentSpec] = {
    "unet": ComponentSpec("unet", "ti2v_jax.models.unet3d", "UNet3DConditionModel",
                          ("UNet3DConditionModel",), "diffusion_pytorch_model"),
    "vae": ComponentSpec("vae", "ti2v_jax.models.vae", "AutoencoderKL",
                         ("AutoencoderKL",), "diffusion_pytorch_model"),
    "text_encoder": ComponentSpec("text_encoder", "ti2v_jax.models.clip_text", "CLIPTextModel",
                                  ("CLIPTextModel",), "model"),
}

# Components copied as files, not converted.
TOKENIZER = "tokenizer"
SCHEDULER = "scheduler"
SCHEDULER_CONFIG = "scheduler_config.json"
