"""The converted checkpoint directory: writing it (atomically) and reading it back.

Its layout (file names, index, JSON reader) is `weights.layout`; everything but `params/`
is plain JSON or copied files, and `checksums.json` (`weights.integrity`) is written last.

Restoring needs neither torch nor the source checkpoint: the Flax model is built
abstractly (`nnx.eval_shape`) from `config.json`, and orbax fills its parameters.
`integrity.verify_checkpoint` re-hashes the files against `checksums.json` (`load` does
so too, for the files it reads), so a corrupted, truncated or incomplete copy is an
`IntegrityError` / `CheckpointNotFoundError` naming the file, never a silently
different video. Checkpoints written before the record existed load with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ti2v_jax import atomic
from ti2v_jax.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    InputError,
    SettingsError,
    first_line,
)
from ti2v_jax.settings import DTYPE_NAMES
from ti2v_jax.weights.components import (
    COMPONENTS,
    SCHEDULER,
    SCHEDULER_CONFIG,
    TOKENIZER,
)
from ti2v_jax.weights.integrity import write_checksums
from ti2v_jax.weights.layout import (
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    PARAMS,
    CheckpointFolder,
    read_config,
    read_folder,
)
from ti2v_jax.weights.mapping import ConversionError

log = logging.getLogger(__name__)

DTYPES = {name: getattr(jnp, name) for name in DTYPE_NAMES}


def dtype_name(dtype) -> str:
    """'float32' | 'bfloat16' | 'float16' from a string or a dtype; anything else raises."""
    try:
        name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    except TypeError:
        name = None
    if name not in DTYPES:
        raise SettingsError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


@contextlib.contextmanager
def quiet_logger(logger: str):
    """Drop `logger`'s records below ERROR for the duration (what they say ends in our own error)."""
    drop = lambda record: record.levelno >= logging.ERROR
    logging.getLogger(logger).addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger(logger).removeFilter(drop)


# ---- parameter trees -------------------------------------------------------------

def param_shapes(model) -> dict[tuple, tuple]:
    """{flax path: shape} of a (possibly abstract) model's nnx.Params."""
    return {path: tuple(v.get_value().shape) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def nest(flat: dict[tuple, object]) -> dict:
    """{('a', 0, 'kernel'): x} -> {'a': {0: {'kernel': x}}} (the `State.to_pure_dict` layout)."""
    out: dict = {}
    for path, value in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = value
    return out


def _flat_keys(tree) -> dict[str, object]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: not isinstance(x, dict))[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def save_params(path, tree) -> None:
    """Save a nested dict of arrays (numpy or jax) as an orbax checkpoint at `path` (must not exist)."""
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(Path(path).absolute(), tree)
    ckptr.wait_until_finished()
    ckptr.close()


def restore_params(path, abstract_model, *, param_dtype=None, sharding=None, name: str = "model") -> nnx.State:
    """The nnx.Param state of `abstract_model`, read from the orbax checkpoint at `path`.

    Leaves keep their saved dtype unless `param_dtype` is given (orbax casts while
    reading). `sharding`: a `jax.sharding.Sharding` for every leaf (default: the
    first device).
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{name}: parameter checkpoint {path} not found")
    ckptr = ocp.StandardCheckpointer()
    try:
        with quiet_logger("absl"):  # orbax logs damaged metadata before returning None; the error below says it
            item = ckptr.metadata(path).item_metadata
        if item is None:
            raise CheckpointError("orbax found no readable array metadata (_METADATA)")
        saved = _flat_keys(item.tree)
        if not saved or not all(hasattr(m, "shape") and hasattr(m, "dtype") for m in saved.values()):
            raise CheckpointError("no array metadata")
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged metadata
        ckptr.close()
        raise CheckpointError(f"{name}: the metadata of {path} is damaged or unreadable ({first_line(e)}); "
                              f"copy or convert the checkpoint again") from None
    state = nnx.state(abstract_model, nnx.Param)
    wanted = _flat_keys(state.to_pure_dict())
    missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    bad = [f"{k}: saved {tuple(saved[k].shape)}, model expects {tuple(wanted[k].shape)}"
           for k in sorted(set(wanted) & set(saved)) if tuple(saved[k].shape) != tuple(wanted[k].shape)]
    if missing or extra or bad:
        lines = [f"{name}: {path} does not match the model configuration"]
        for title, items in (("missing", missing), ("unexpected", extra), ("wrong shapes", bad)):
            if items:
                lines += [f"  {title} ({len(items)}):"] + [f"    {i}" for i in items]
        raise ConversionError("\n".join(lines))
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(v, key):
        dtype = param_dtype or saved[key].dtype
        return jax.ShapeDtypeStruct(tuple(v.shape), dtype, sharding=sharding)

    pure = state.to_pure_dict()
    keys = iter(_flat_keys(pure))
    target_tree = jax.tree.map(lambda v: target(v, next(keys)), pure)
    try:
        restored = ckptr.restore(path, target_tree)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupted data: tensorstore errors of various types
        raise CheckpointError(f"{name}: cannot read the parameters in {path} ({first_line(e)}); the data files "
                              f"are damaged: `ti2v-jax verify` names them; copy or convert the checkpoint "
                              f"again") from None
    finally:
        ckptr.close()
    nnx.replace_by_pure_dict(state, restored)
    return state


# ---- writing a converted directory ---------------------------------------------

def write_component(root, name: str, config: dict, params_tree, *, config_file=None) -> None:
    """`root/name/config.json` (copied from `config_file` if given) and `root/name/params/`."""
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    if config_file is not None:
        shutil.copyfile(config_file, d / "config.json")
    else:
        (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_params(d / PARAMS, params_tree)


def write_extras(root, *, tokenizer_dir=None, scheduler_config=None) -> None:
    """Copy the tokenizer directory and write the scheduler config, as diffusers lays them out."""
    root = Path(root)
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, root / TOKENIZER)
    if scheduler_config is not None:
        (root / SCHEDULER).mkdir(exist_ok=True)
        if isinstance(scheduler_config, (str, os.PathLike)):
            shutil.copyfile(scheduler_config, root / SCHEDULER / SCHEDULER_CONFIG)
        else:
            (root / SCHEDULER / SCHEDULER_CONFIG).write_text(json.dumps(scheduler_config, indent=2) + "\n")


def write_index(root, *, dtype: str, components: dict, source=None, source_index=None, **extra) -> None:
    from ti2v_jax import __version__

    root = Path(root)
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, "ti2v_jax_version": __version__,
             "dtype": dtype, "source": None if source is None else str(source), "components": components,
             "tokenizer": TOKENIZER if (root / TOKENIZER).is_dir() else None,
             "scheduler": SCHEDULER if (root / SCHEDULER / SCHEDULER_CONFIG).is_file() else None,
             "source_model_index": source_index, **extra}
    (root / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    write_checksums(root)  # last: it covers the index too


def save_converted(dst, models: dict, configs: dict, *, tokenizer_dir=None, scheduler_config=None,
                   dtype=None, overwrite: bool = False, specs=COMPONENTS, **metadata) -> Path:
    """Write Flax models as a converted directory that `load`/`load_component` read.

    models: {component name: nnx.Module or nnx.State of its Params}; configs: {name:
    config dict}. dtype: cast floating parameters to it (default: keep, and record the
    first model's parameter dtype). scheduler_config: a dict or a path to a JSON file.
    """
    if set(models) - set(specs):
        raise InputError(f"unknown components {sorted(set(models) - set(specs))}; known: {sorted(specs)}")
    trees = {}
    for name, m in models.items():
        state = m if isinstance(m, nnx.State) else nnx.state(m, nnx.Param)
        trees[name] = jax.tree.map(np.asarray, state.to_pure_dict())
    leaves = [x for t in trees.values() for x in jax.tree.leaves(t)]
    if dtype is None:
        dtype = leaves[0].dtype if leaves else jnp.float32
    dtype = dtype_name(dtype)
    trees = {n: jax.tree.map(lambda x: x.astype(DTYPES[dtype]) if jnp.issubdtype(x.dtype, jnp.floating) else x, t)
             for n, t in trees.items()}
    with atomic.directory(dst, overwrite=overwrite) as tmp:
        for name, tree in trees.items():
            write_component(tmp, name, configs[name], tree)
        write_extras(tmp, tokenizer_dir=tokenizer_dir, scheduler_config=scheduler_config)
        write_index(tmp, dtype=dtype, components={n: {"class": specs[n].class_name} for n in trees}, **metadata)
    return Path(dst)


# ---- reading one component -----------------------------------------------------

def abstract_model(spec, config: dict, *, dtype, param_dtype, attention=None, where: str = "config"):
    """`spec.abstract(...)`, with a config the model rejects (a field of the wrong type or value)
    as a one-line CheckpointError naming `where` (the config file)."""
    try:
        return spec.abstract(config, dtype=dtype, param_dtype=param_dtype, attention=attention)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise CheckpointError(f"{spec.name}: {where} does not describe a model this version can build as "
                              f"{spec.class_name} ({first_line(e)})") from None


def converted_folder(directory) -> CheckpointFolder:
    """`layout.read_folder` of a converted directory (a `CheckpointFolder` as it is); another layout
    is a CheckpointError."""
    folder = read_folder(directory)
    if folder.format != "converted":
        raise CheckpointError(f"{folder.path} is not a converted ti2v-jax checkpoint (no {INDEX} with "
                              f'"format": "{FORMAT}"); convert it with `ti2v-jax convert`')
    return folder


def saved_dtype(directory) -> str:
    """The parameter dtype a converted directory (or its `CheckpointFolder`) was written in."""
    folder = read_folder(directory)
    name = (folder.index or {}).get("dtype", "float32")
    if name not in DTYPES:
        raise CheckpointError(f"{folder.path / INDEX}: unknown dtype {name!r} (one of {', '.join(DTYPES)})")
    return name


def component_config(directory, name: str) -> dict:
    """The config of component `name` of a converted directory (or its `CheckpointFolder`), which its
    index must list."""
    folder = converted_folder(directory)
    listed = folder.index.get("components", {})
    if name not in listed:
        raise CheckpointNotFoundError(f"{folder.path} has no component {name!r}; it has {sorted(listed)}")
    return read_config(folder.path, name)


def load_split(directory, name: str, *, dtype=None, param_dtype=None, sharding=None, attention=None,
               specs=COMPONENTS, config: dict | None = None):
    """(graphdef, params, rest) of one component of a converted directory (or its `CheckpointFolder`).

    dtype: computation dtype; param_dtype: parameter dtype (orbax casts while
    reading). Default: param_dtype = dtype, and both the saved dtype if neither is given.
    sharding: where the parameters are restored (default: the first device); orbax reads
    them straight there. attention: the attention implementation (see
    `ComponentSpec.build`). config: the component's config as `component_config` gave it
    (read here if None). The one abstract model built from it gives both the graphdef and
    the shapes orbax restores. `rest` holds non-parameter state (none in our models;
    materialised if a model ever has some). No checksum verification here: `loading.load`
    verifies.
    """
    folder = converted_folder(directory)
    if config is None:
        config = component_config(folder, name)
    directory = folder.path
    spec = specs[name]
    param_dtype = jnp.dtype(param_dtype or dtype or DTYPES[saved_dtype(folder)])
    compute = jnp.dtype(dtype or param_dtype)
    abstract = abstract_model(spec, config, dtype=compute, param_dtype=param_dtype, attention=attention,
                              where=str(directory / name / "config.json"))
    graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
    params = restore_params(directory / name / PARAMS, abstract, param_dtype=param_dtype, sharding=sharding,
                            name=name)
    if jax.tree.leaves(rest):
        # Non-parameter state (none in our models today): computed, the parameters' init dead-code-eliminated.
        build = lambda: spec.build(config, dtype=compute, param_dtype=param_dtype, attention=attention)
        rest = jax.jit(lambda: nnx.state(build(), nnx.Not(nnx.Param)))()
    return graphdef, params, rest


def load_component(directory, name: str, *, dtype=None, param_dtype=None, sharding=None, attention=None,
                   specs=COMPONENTS):
    """One component of a converted directory as an nnx.Module (see `load_split` for dtypes)."""
    graphdef, params, rest = load_split(directory, name, dtype=dtype, param_dtype=param_dtype, sharding=sharding,
                                        attention=attention, specs=specs)
    return nnx.merge(graphdef, params, rest)
