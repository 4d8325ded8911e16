"""The converted checkpoint directory: writing it (atomically) and reading it back.

Layout (everything but `params/` is plain JSON or copied files):

    model_index.json              {"format": "ti2v-jax", "format_version", "dtype", "components", ...}
    <component>/config.json       the diffusers/transformers config, as it came
    <component>/params/           orbax checkpoint of the nested parameter dict
    tokenizer/                    the tokenizer files, as they came
    scheduler/scheduler_config.json

Restoring needs neither torch nor the source checkpoint: the Flax model is built
abstractly (`nnx.eval_shape`) from `config.json`, and orbax fills its parameters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ti2v_jax.weights.components import COMPONENTS, SCHEDULER, SCHEDULER_CONFIG, TOKENIZER
from ti2v_jax.weights.mapping import ConversionError

FORMAT = "ti2v-jax"
FORMAT_VERSION = 1
INDEX = "model_index.json"
PARAMS = "params"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_name(dtype) -> str:
    """'float32' | 'bfloat16' | 'float16' from a string or a dtype; anything else raises."""
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


def is_converted(directory) -> bool:
    """True for a directory written by `convert_diffusers` / `save_converted`."""
    try:
        return read_index(directory).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def is_diffusers(directory) -> bool:
    """True for a diffusers pipeline directory (a `model_index.json` naming a pipeline class)."""
    try:
        index = read_index(directory)
    except (OSError, ValueError):
        return False
    return index.get("format") != FORMAT and "_class_name" in index


def read_index(directory) -> dict:
    path = Path(directory) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return json.loads(path.read_text())


def read_config(directory, name: str) -> dict:
    path = Path(directory) / name / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{name}: config file {path} not found")
    return json.loads(path.read_text())


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
        raise FileNotFoundError(f"{name}: parameter checkpoint {path} not found")
    ckptr = ocp.StandardCheckpointer()
    saved = _flat_keys(ckptr.metadata(path).item_metadata.tree)
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
    restored = ckptr.restore(path, target_tree)
    ckptr.close()
    nnx.replace_by_pure_dict(state, restored)
    return state


# ---- writing a converted directory ---------------------------------------------

@contextlib.contextmanager
def atomic_directory(dst, *, overwrite: bool = False, protect=()):
    """Yield a fresh temporary directory beside `dst`; it becomes `dst` only on success.

    An existing `dst` is an error unless `overwrite`, in which case it is swapped out
    (rename, rename, delete) only once the new one is complete. On any error the
    temporary directory is removed and `dst` is left as it was. `protect`: paths that
    must not be replaced (e.g. the source checkpoint).
    """
    dst = Path(dst).absolute()
    for p in protect:
        p = Path(p).absolute()
        if dst == p or p.is_relative_to(dst):
            raise ValueError(f"destination {dst} would replace the source {p}")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dst, old)
            os.replace(tmp, dst)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def save_converted(dst, models: dict, configs: dict, *, tokenizer_dir=None, scheduler_config=None,
                   dtype=None, overwrite: bool = False, specs=COMPONENTS, **metadata) -> Path:
    """Write Flax models as a converted directory that `load`/`load_component` read.

    models: {component name: nnx.Module or nnx.State of its Params}; configs: {name:
    config dict}. dtype: cast floating parameters to it (default: keep, and record the
    first model's parameter dtype). scheduler_config: a dict or a path to a JSON file.
    """
    if set(models) - set(specs):
        raise ValueError(f"unknown components {sorted(set(models) - set(specs))}; known: {sorted(specs)}")
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
    with atomic_directory(dst, overwrite=overwrite) as tmp:
        for name, tree in trees.items():
            write_component(tmp, name, configs[name], tree)
        write_extras(tmp, tokenizer_dir=tokenizer_dir, scheduler_config=scheduler_config)
        write_index(tmp, dtype=dtype, components={n: {"class": specs[n].class_name} for n in trees}, **metadata)
    return Path(dst)


# ---- reading one component -----------------------------------------------------

def load_split(directory, name: str, *, dtype=None, param_dtype=None, sharding=None, specs=COMPONENTS):
    """(graphdef, params, rest) of one component of a converted directory.

    dtype: computation dtype; param_dtype: parameter dtype (orbax casts while
    reading). Default: param_dtype = dtype, and both the saved dtype if neither is given. `rest` holds non-parameter state
    (none in our models; materialised if a model ever has some).
    """
    directory = Path(directory)
    if not is_converted(directory):
        raise ValueError(f"{directory} is not a converted ti2v-jax checkpoint (no {INDEX} with "
                         f'"format": "{FORMAT}"); convert it with `ti2v-jax convert`')
    index = read_index(directory)
    if name not in index.get("components", {}):
        raise KeyError(f"{directory} has no component {name!r}; it has {sorted(index.get('components', {}))}")
    spec = specs[name]
    config = read_config(directory, name)
    param_dtype = jnp.dtype(param_dtype or dtype or DTYPES[index.get("dtype", "float32")])
    compute = jnp.dtype(dtype or param_dtype)
    abstract = spec.abstract(config, dtype=compute, param_dtype=param_dtype)
    graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
    params = restore_params(directory / name / PARAMS, abstract, param_dtype=param_dtype, sharding=sharding,
                            name=name)
    if jax.tree.leaves(rest):
        # Non-parameter state (none in our models today): computed, the parameters' init dead-code-eliminated.
        build = lambda: spec.build(config, dtype=compute, param_dtype=param_dtype)  # noqa: E731
        rest = jax.jit(lambda: nnx.state(build(), nnx.Not(nnx.Param)))()
    return graphdef, params, rest


def load_component(directory, name: str, *, dtype=None, param_dtype=None, sharding=None, specs=COMPONENTS):
    """One component of a converted directory as an nnx.Module (see `load_split` for dtypes)."""
    graphdef, params, rest = load_split(directory, name, dtype=dtype, param_dtype=param_dtype, sharding=sharding,
                                        specs=specs)
    return nnx.merge(graphdef, params, rest)
