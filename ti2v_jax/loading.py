"""Load a checkpoint as pure functions plus parameters.

    c = ti2v_jax.loading.load("ckpt/", dtype=jnp.bfloat16)
    eps = c.unet_apply(c.unet_params, x, t, context)          # x: (B, F, h, w, C)
    z = c.vae_encode(c.vae_params, frames)                    # frames in [-1, 1] -> scaled latents
    ctx = c.text_encode(c.text_encoder_params, ids)

Each apply function is pure: `nnx.merge(graphdef, params)` happens inside it, so
`jax.jit`, `jax.grad` and `jax.vmap` see only arrays (`params` is an nnx.State
pytree). The graphdef is closed over, so jitting one of them compiles one program.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ti2v_jax.weights import checkpoint as ckpt
from ti2v_jax.weights.checkpoint import is_converted, is_diffusers, load_component, save_converted  # noqa: F401
from ti2v_jax.weights.components import COMPONENTS, SCHEDULER, SCHEDULER_CONFIG, TOKENIZER

MODEL_COMPONENTS = ("unet", "vae", "text_encoder")
DEFAULT_SCALING_FACTOR = 0.18215


def pure(graphdef, rest=None, method: str | None = None) -> Callable:
    """`f(params, *args)` = `nnx.merge(graphdef, params, rest).method(*args)`."""
    def f(params, *args, **kwargs):
        model = nnx.merge(graphdef, params, rest) if rest is not None else nnx.merge(graphdef, params)
        return (model if method is None else getattr(model, method))(*args, **kwargs)
    return f


def _over_frames(fn):
    """Let an image function take videos (B, F, H, W, C) too, frame by frame as one batch."""
    def g(params, x):
        if x.ndim == 5:
            b, f = x.shape[:2]
            y = fn(params, x.reshape((b * f,) + x.shape[2:]))
            return y.reshape((b, f) + y.shape[1:])
        return fn(params, x)
    return g


@dataclasses.dataclass(frozen=True)
class Components:
    """What a checkpoint holds: (graphdef, params) per network, tokenizer, configs, pure functions.

    unet_apply(params, x (B,F,h,w,C), t (B,) or scalar, ctx (B,T,D) or (n*B,T,D)) -> eps (B or n*B, ...):
        n contexts per sample as `UNet3DConditionModel` documents.
    vae_encode(params, frames (N,H,W,3) or (B,F,H,W,3) in [-1,1]) -> posterior mean *
        scaling_factor (the diffusion-space latents; deterministic, no sampling).
    vae_decode(params, latents (N,h,w,C) or (B,F,h,w,C), diffusion space) -> frames in ~[-1,1].
    text_encode(params, ids (B,T) int32) -> last hidden state (B,T,D).
    """
    unet: tuple | None
    vae: tuple | None
    text_encoder: tuple | None
    tokenizer: Any
    scheduler_config: dict | None
    configs: dict
    unet_apply: Callable | None = None
    vae_encode: Callable | None = None
    vae_decode: Callable | None = None
    text_encode: Callable | None = None

    @property
    def unet_params(self):
        return self.unet[1]

    @property
    def vae_params(self):
        return self.vae[1]

    @property
    def text_encoder_params(self):
        return self.text_encoder[1]

    @property
    def params(self) -> dict:
        """{name: params} of the loaded networks (one pytree, e.g. to shard or to count)."""
        return {n: getattr(self, n)[1] for n in MODEL_COMPONENTS if getattr(self, n) is not None}

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.configs.get("vae", {}).get("scaling_factor", DEFAULT_SCALING_FACTOR))


def from_splits(splits: dict, configs: dict, *, tokenizer=None, scheduler_config=None) -> Components:
    """Components from {name: (graphdef, params, rest)}: builds the pure functions."""
    get = lambda n: splits[n][:2] if n in splits else None  # noqa: E731
    fns = {}
    if "unet" in splits:
        g, _, rest = splits["unet"]
        fns["unet_apply"] = pure(g, rest)
    if "vae" in splits:
        g, _, rest = splits["vae"]
        sf = float(configs["vae"].get("scaling_factor", DEFAULT_SCALING_FACTOR))
        encode, decode = pure(g, rest, "encode"), pure(g, rest, "decode")
        fns["vae_encode"] = _over_frames(lambda p, x: encode(p, x)[0] * sf)
        fns["vae_decode"] = _over_frames(lambda p, z: decode(p, z / sf))
    if "text_encoder" in splits:
        g, _, rest = splits["text_encoder"]
        fns["text_encode"] = pure(g, rest)
    return Components(get("unet"), get("vae"), get("text_encoder"), tokenizer, scheduler_config, configs, **fns)


def load(directory, *, dtype=None, param_dtype=None, components=MODEL_COMPONENTS, tokenizer: bool = True,
         sharding=None) -> Components:
    """Load a converted checkpoint (or convert a diffusers directory in memory).

    dtype: computation dtype; param_dtype: parameter dtype (default: dtype, or as saved).
    components: which networks to load. sharding: one `jax.sharding.Sharding` for
    every parameter (default: the first device).
    """
    directory = Path(directory)
    if is_converted(directory):
        splits = {n: ckpt.load_split(directory, n, dtype=dtype, param_dtype=param_dtype, sharding=sharding)
                  for n in components}
        configs = {n: ckpt.read_config(directory, n) for n in components}
    elif is_diffusers(directory):
        from ti2v_jax.weights.convert import convert_in_memory

        pdt = jnp.dtype(param_dtype or dtype or jnp.float32)
        converted = convert_in_memory(directory, dtype=ckpt.dtype_name(pdt), components=components)
        splits, configs = {}, {}
        for n, (config, _) in converted.items():
            model = COMPONENTS[n].abstract(config, dtype=jnp.dtype(dtype or pdt), param_dtype=pdt)
            g, _, rest = nnx.split(model, nnx.Param, ...)
            if jax.tree.leaves(rest):
                raise NotImplementedError(f"{n}: in-memory conversion of a model with non-parameter state; "
                                          f"convert it to a directory first")
            params = converted[n][1] if sharding is None else jax.device_put(converted[n][1], sharding)
            splits[n], configs[n] = (g, params, rest), config
    else:
        raise ValueError(f"{directory} is neither a converted ti2v-jax checkpoint nor a diffusers pipeline "
                         f"directory (no usable model_index.json)")
    tok = None
    if tokenizer and (directory / TOKENIZER).is_dir():
        from ti2v_jax.tokenizer import load_tokenizer

        tok = load_tokenizer(directory / TOKENIZER)
    sched_path = directory / SCHEDULER / SCHEDULER_CONFIG
    sched = json.loads(sched_path.read_text()) if sched_path.is_file() else None
    return from_splits(splits, configs, tokenizer=tok, scheduler_config=sched)


def describe(directory) -> dict:
    """What `ti2v-jax info` prints: per component its class, config, parameter count and dtypes.

    A converted directory is read from its orbax metadata (no weights loaded); a
    diffusers or original ModelScope directory is converted in memory first.
    """
    import numpy as np

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    info: dict = {"directory": str(directory.absolute())}
    comps: dict = {}
    if is_converted(directory):
        import orbax.checkpoint as ocp

        index = ckpt.read_index(directory)
        info["format"] = "ti2v-jax (converted)"
        for key in ("version", "dtype", "source", "source_format"):
            if key in index:
                info[key] = index[key]
        for name in MODEL_COMPONENTS:
            if not (directory / name).is_dir():
                continue
            ckptr = ocp.StandardCheckpointer()
            meta = ckptr.metadata((directory / name / "params").absolute()).item_metadata.tree
            ckptr.close()
            leaves = list(ckpt._flat_keys(meta).values())
            comps[name] = _summary(name, ckpt.read_config(directory, name),
                                   [(tuple(m.shape), np.dtype(m.dtype).name) for m in leaves])
    else:
        from ti2v_jax.weights import modelscope

        if is_diffusers(directory):
            from ti2v_jax.weights.convert import convert_in_memory

            info["format"] = "diffusers (PyTorch), converted in memory for this report"
            converted = convert_in_memory(directory)
        elif modelscope.is_modelscope(directory):
            info["format"] = "original ModelScope (PyTorch), converted in memory for this report"
            converted = modelscope.convert_in_memory(directory)
        else:
            raise ValueError(f"{directory} is not a checkpoint directory (no model_index.json, "
                             f"no ModelScope configuration.json)")
        for name, (config, state) in converted.items():
            leaves = jax.tree.leaves(state)
            comps[name] = _summary(name, config, [(tuple(v.shape), np.dtype(v.dtype).name) for v in leaves])
    info["components"] = comps
    info["total_params"] = sum(c["num_params"] for c in comps.values())
    return info


def _summary(name, config, shapes_dtypes) -> dict:
    import math

    dtypes = sorted({d for _, d in shapes_dtypes})
    return {"class": COMPONENTS[name].class_name, "config": config,
            "num_params": int(sum(math.prod(s) for s, _ in shapes_dtypes)),
            "num_tensors": len(shapes_dtypes), "dtype": ",".join(dtypes)}
