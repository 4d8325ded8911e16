"""Load a checkpoint as pure functions plus parameters.

    c = ti2v_jax.loading.load("ckpt/", dtype="bfloat16", component_dtypes={"vae": "float32"})
    eps = c.unet_apply(c.unet_params, x, t, context)          # x: (B, F, h, w, C)
    z = c.vae_encode(c.vae_params, frames)                    # frames in [-1, 1] -> scaled latents
    ctx = c.text_encode(c.text_encoder_params, ids)

Each apply function is pure: `nnx.merge(graphdef, params)` happens inside it, so
`jax.jit`, `jax.grad` and `jax.vmap` see only arrays (`params` is an nnx.State
pytree). The graphdef is closed over, so jitting one of them compiles one program.

`load` reads all three layouts: a converted directory through orbax, after checking
its files against `checksums.json`; a diffusers or original ModelScope directory
through the one in-memory conversion (`weights.convert.convert_components`).
Parameters go straight onto the devices given (replicated over the data axis of
`parallel.data_mesh`), once. One pass over the folder: `read_folder` detects its
layout and parses its index (or ModelScope configuration) once, and that record is
what every reader below is handed; each network's config is parsed once and its
abstract model built once (the same one gives the conversion its target shapes and
the parameters their graphdef).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ti2v_jax import parallel, platforms
from ti2v_jax.errors import CheckpointError, CheckpointNotFoundError, SettingsError, first_line
from ti2v_jax.sampling import schedule
from ti2v_jax.weights import checkpoint as ckpt
from ti2v_jax.weights import convert, integrity, layout
from ti2v_jax.weights.checkpoint import (  # noqa: F401  (re-exported)
    load_component,
    save_converted,
)
from ti2v_jax.weights.components import (
    COMPONENTS,
    SCHEDULER,
    SCHEDULER_CONFIG,
    TOKENIZER,
)
from ti2v_jax.weights.integrity import verify_checkpoint  # noqa: F401  (re-exported)
from ti2v_jax.weights.convert import detect_format  # noqa: F401  (re-exported)
from ti2v_jax.weights.layout import CheckpointFolder, read_folder  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

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
    dtypes: {name: jnp.dtype}, the dtype each loaded network's parameters are held and its
        compute runs in (callers cast inputs to it at the call boundary).
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
    dtypes: dict = dataclasses.field(default_factory=dict)

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


def from_splits(splits: dict, configs: dict, *, tokenizer=None, scheduler_config=None, dtypes=None) -> Components:
    """Components from {name: (graphdef, params, rest)}: builds the pure functions.

    dtypes: {name: compute dtype}; default: each network's parameter dtype.
    """
    get = lambda n: splits[n][:2] if n in splits else None
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
    if dtypes is None:
        dtypes = {n: _params_dtype(s[1]) for n, s in splits.items()}
    return Components(get("unet"), get("vae"), get("text_encoder"), tokenizer, scheduler_config, configs,
                      dtypes={n: jnp.dtype(d) for n, d in dtypes.items()}, **fns)


def _params_dtype(params):
    floats = [x.dtype for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.dtype(floats[0]) if floats else jnp.dtype(jnp.float32)


def resolve_dtypes(dtype=None, component_dtypes=None, *, components=MODEL_COMPONENTS,
                   default="float32") -> dict[str, jnp.dtype]:
    """{name: dtype} per network: `component_dtypes[name]`, else `dtype`, else `default`.

    Each value is "float32" | "bfloat16" | "float16" (or that jnp dtype); a name that is
    not a network, or another dtype, is a SettingsError.
    """
    component_dtypes = dict(component_dtypes or {})
    unknown = sorted(set(component_dtypes) - set(MODEL_COMPONENTS))
    if unknown:
        raise SettingsError(f"component_dtypes names {unknown}; the networks are {', '.join(MODEL_COMPONENTS)}")
    out = {}
    for n in components:
        chosen = component_dtypes.get(n, dtype if dtype is not None else default)
        out[n] = jnp.dtype(ckpt.DTYPES[ckpt.dtype_name(chosen)])
    return out


def load(directory, *, dtype=None, component_dtypes: dict | None = None, components=MODEL_COMPONENTS,
         tokenizer: bool = True, devices: Sequence[jax.Device] | None = None, attention: str | None = None,
         verify: bool = True) -> Components:
    """Load a checkpoint in any layout: converted, diffusers or original ModelScope.

    directory: the checkpoint directory, or its `read_folder` record (to read its
    model_index.json fields beside the load without parsing it again). dtype: parameter
    and compute dtype of every network ("float32" | "bfloat16" | "float16"); default: as
    saved (converted) or float32. component_dtypes: per network overrides, e.g.
    {"vae": "float32", "text_encoder": "float32"}. components: which
    networks to load. tokenizer: load the tokenizer too (a missing tokenizer/ is then a
    CheckpointNotFoundError). devices: where the parameters go, once: one device, or
    several (replicated over the "data" axis of `parallel.data_mesh(devices)`, the
    placement `parallel.run_batched` uses as is); default: the first device. attention:
    the attention implementation the networks are built with (None: the one
    `platforms.PLATFORMS` names for the devices' platform; a kernel those devices cannot
    run is a SettingsError). verify: check a converted checkpoint's files against its checksums.json
    first (also skipped with TI2V_NO_VERIFY=1); one without that record loads with a
    logged warning. diffusers and ModelScope directories are converted in memory (logged;
    `ti2v-jax convert` once to skip that).

    Errors are one-line `ti2v_jax.errors` classes naming the file: CheckpointNotFoundError,
    CheckpointError, IntegrityError, SettingsError.
    """
    folder = read_folder(directory)  # the one detection and parse of the index; handed down from here
    directory, fmt = folder.path, folder.format
    layout.check_index_fields(folder)
    components = tuple(components)
    unknown = sorted(set(components) - set(MODEL_COMPONENTS))
    if unknown:
        raise SettingsError(f"components names {unknown}; the networks are {', '.join(MODEL_COMPONENTS)}")
    attention = platforms.attention_for(attention, platforms.platform_of(devices))
    sharding = parallel.replicated(devices)
    if fmt == "converted":
        integrity.verify_for_loading(directory, components, verify=verify)
        dtypes = resolve_dtypes(dtype, component_dtypes, components=components, default=ckpt.saved_dtype(folder))
        splits, configs = {}, {}
        for n in components:
            configs[n] = ckpt.component_config(folder, n)
            splits[n] = ckpt.load_split(folder, n, dtype=dtypes[n], param_dtype=dtypes[n], sharding=sharding,
                                        attention=attention, config=configs[n])
        tok = _converted_tokenizer(directory) if tokenizer else None
        sched_path = directory / SCHEDULER / SCHEDULER_CONFIG
        sched = layout.read_json(sched_path, "scheduler config") if sched_path.is_file() else None
    else:
        log.info("%s is a %s checkpoint: converting it in memory (run `ti2v-jax convert` once to skip this)",
                 directory, fmt)
        dtypes = resolve_dtypes(dtype, component_dtypes, components=components)
        splits, configs = {}, {}
        for n, c in convert.convert_components(folder, dtype={k: v.name for k, v in dtypes.items()},
                                               components=components, attention=attention):
            g, state, rest = nnx.split(c.model, nnx.Param, ...)  # the abstract model the conversion fitted
            if jax.tree.leaves(rest):
                raise CheckpointError(f"{n}: in-memory conversion of a model with non-parameter state; "
                                      f"convert it to a directory first (`ti2v-jax convert`)")
            # Host arrays straight to their devices: one placement, no copy on a default device first.
            tree = jax.tree.map(lambda x: _place(x, sharding), ckpt.nest(c.params))
            nnx.replace_by_pure_dict(state, tree)
            splits[n], configs[n] = (g, state, rest), c.config
            del c
        tok = convert.source_tokenizer(folder, fmt) if tokenizer else None
        sched = convert.source_scheduler_config(folder, fmt)
    sched_file = "configuration.json" if fmt == "modelscope" else f"{SCHEDULER}/{SCHEDULER_CONFIG}"
    schedule.scheduler_values(sched, where=str(directory / sched_file))
    return from_splits(splits, configs, tokenizer=tok, scheduler_config=sched, dtypes=dtypes)


def _place(x: np.ndarray, sharding) -> jax.Array:
    """A host array on `sharding`'s devices; across processes each fills its own devices."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _converted_tokenizer(directory: Path):
    path = directory / TOKENIZER
    if not path.is_dir() or not any(path.iterdir()):
        raise CheckpointNotFoundError(
            f"{directory} has no tokenizer: {path} is missing or empty (a CLIP tokenizer: vocab.json, merges.txt, "
            f"tokenizer_config.json); copy tokenizer/ from the source checkpoint, or load with tokenizer=False")
    from ti2v_jax.tokenizer import load_tokenizer

    return convert._load_tokenizer(load_tokenizer, path)


def describe(directory) -> dict:
    """What `ti2v-jax info` prints: per component its class, config, parameter count and dtypes.

    A converted directory is read from its orbax metadata (no weights loaded, no
    checksums checked: `verify_checkpoint` does that); a diffusers or original
    ModelScope directory is converted in memory first.
    """
    folder = read_folder(directory)
    directory, fmt = folder.path, folder.format
    info: dict = {"directory": str(directory.absolute())}
    comps: dict = {}
    if fmt == "converted":
        import orbax.checkpoint as ocp

        index = folder.index
        info["format"] = "ti2v-jax (converted)"
        for key in ("version", "dtype", "source", "source_format"):
            if key in index:
                info[key] = index[key]
        info["checksums"] = integrity.CHECKSUMS if (directory / integrity.CHECKSUMS).is_file() else None
        for name in MODEL_COMPONENTS:
            if not (directory / name).is_dir():
                continue
            path = (directory / name / layout.PARAMS).absolute()
            ckptr = ocp.StandardCheckpointer()
            try:
                with ckpt.quiet_logger("absl"):  # orbax logs what the error below says
                    item = ckptr.metadata(path).item_metadata
                if item is None:
                    raise CheckpointError("orbax found no readable array metadata (_METADATA)")
                meta = item.tree
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - damaged metadata: orbax/tensorstore errors of many types
                raise CheckpointError(f"{name}: the metadata of {path} is damaged or unreadable "
                                      f"({first_line(e)})") from None
            finally:
                ckptr.close()
            leaves = list(ckpt._flat_keys(meta).values())
            comps[name] = _summary(name, layout.read_config(directory, name),
                                   [(tuple(m.shape), np.dtype(m.dtype).name) for m in leaves])
    else:
        info["format"] = {"diffusers": "diffusers (PyTorch)", "modelscope": "original ModelScope (PyTorch)"}[fmt] \
            + ", converted in memory for this report"
        for name, c in convert.convert_components(folder):
            comps[name] = _summary(name, c.config, [(tuple(v.shape), np.dtype(v.dtype).name)
                                                    for v in c.params.values()])
    info["components"] = comps
    info["total_params"] = sum(c["num_params"] for c in comps.values())
    return info


def _summary(name, config, shapes_dtypes) -> dict:
    import math

    dtypes = sorted({d for _, d in shapes_dtypes})
    return {"class": COMPONENTS[name].class_name, "config": config,
            "num_params": int(sum(math.prod(s) for s, _ in shapes_dtypes)),
            "num_tensors": len(shapes_dtypes), "dtype": ",".join(dtypes)}


def abstract_components(configs: dict, *, dtype="float32", component_dtypes: dict | None = None,
                        attention: str | None = None, platform: str | None = None,
                        scheduler_config: dict | None = None) -> Components:
    """Components whose parameters are `jax.ShapeDtypeStruct`s: nothing is materialised.

    configs: {name: config} of the networks (a converted checkpoint's or `MS17B_CONFIGS`'s);
    dtypes as in `load`; the networks are built for `platform` (default: JAX's default
    backend): its attention kernel unless `attention` says otherwise. For lowering and
    compiling programs ahead of time (`ti2v_jax.plan`), never for running them.
    """
    attention = platforms.attention_for(attention, platform)
    names = tuple(n for n in MODEL_COMPONENTS if n in configs)
    dtypes = resolve_dtypes(dtype, component_dtypes, components=names)
    splits = {}
    for n in names:
        model = ckpt.abstract_model(COMPONENTS[n], configs[n], dtype=dtypes[n], param_dtype=dtypes[n],
                                    attention=attention, where=f"{n} config")
        splits[n] = nnx.split(model, nnx.Param, ...)
    return from_splits(splits, dict(configs), scheduler_config=scheduler_config, dtypes=dtypes)
