"""The converted checkpoint directory: writing it (atomically) and reading it back.

Layout (everything but `params/` is plain JSON or copied files):

    model_index.json              {"format": "ti2v-jax", "format_version", "dtype", "components", ...}
    <component>/config.json       the diffusers/transformers config, as it came
    <component>/params/           orbax checkpoint of the nested parameter dict
    tokenizer/                    the tokenizer files, as they came
    scheduler/scheduler_config.json
    checksums.json                {"algorithm": "sha256", "files": {relative path: {"sha256", "size"}}}
                                  of every other file, written last

Restoring needs neither torch nor the source checkpoint: the Flax model is built
abstractly (`nnx.eval_shape`) from `config.json`, and orbax fills its parameters.
`verify_checkpoint` re-hashes the files against `checksums.json` (`load` does so too,
for the files it reads), so a corrupted, truncated or incomplete copy is an
`IntegrityError` / `CheckpointNotFoundError` naming the file, never a silently
different video. Checkpoints written before the record existed load with a warning.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from glob import escape as glob_escape
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ti2v_jax import cleanup, env
from ti2v_jax.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    InputError,
    IntegrityError,
    OutputExistsError,
    SettingsError,
)
from ti2v_jax.weights.components import (
    COMPONENTS,
    SCHEDULER,
    SCHEDULER_CONFIG,
    TOKENIZER,
)
from ti2v_jax.weights.mapping import ConversionError

log = logging.getLogger(__name__)

FORMAT = "ti2v-jax"
FORMAT_VERSION = 1
INDEX = "model_index.json"
PARAMS = "params"
CHECKSUMS = "checksums.json"
HASH = "sha256"  # hashlib's, with SHA-NI/ARMv8 instructions on current CPUs; `sha256sum` can check it too
NO_VERIFY_ENV = env.NO_VERIFY
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_name(dtype) -> str:
    """'float32' | 'bfloat16' | 'float16' from a string or a dtype; anything else raises."""
    try:
        name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    except TypeError:
        name = None
    if name not in DTYPES:
        raise SettingsError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


def _one_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (tensorstore/orbax errors run to pages)."""
    text = str(e).strip()
    first = text.splitlines()[0].strip() if text else ""
    first = first.split(" See full TensorStore details")[0]  # the rest is a multi-page spec dump
    first = first if len(first) <= limit else first[:limit] + "..."
    array = re.search(r"'path': '([^'/][^']*)'", text)  # tensorstore names the array it failed on
    if array:
        first += f" [array {array.group(1)}]"
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


@contextlib.contextmanager
def quiet_logger(logger: str):
    """Drop `logger`'s records below ERROR for the duration (what they say ends in our own error)."""
    drop = lambda record: record.levelno >= logging.ERROR
    logging.getLogger(logger).addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger(logger).removeFilter(drop)


def is_converted(directory) -> bool:
    """True for a directory written by `save_converted` (the one format check that needs no
    converter; `weights.convert.detect_format` tells every layout apart)."""
    try:
        return read_index(directory).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_json(path, what: str = "file") -> dict:
    """A JSON object from `path`; a missing, unreadable or non-object file is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{what} {path} not found")
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} {path} is not valid JSON ({_one_line(e)})") from None
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be read ({_one_line(e)})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} {path} holds a JSON {type(value).__name__}, expected an object")
    return value


def read_index(directory) -> dict:
    return read_json(Path(directory) / INDEX, "checkpoint index")


# model_index.json fields a checkpoint may recommend (the pipeline's K and N), with their least values.
INDEX_INTEGERS = {"num_frames": 2, "num_new_frames": 1}


def check_index_fields(directory) -> None:
    """A one-line CheckpointError naming the file and field when `directory`'s model_index.json
    gives one of `INDEX_INTEGERS` as something other than a large enough integer (e.g. null)."""
    path = Path(directory) / INDEX
    if not path.is_file():
        return
    index = read_json(path, "model index")
    for field, low in INDEX_INTEGERS.items():
        v = index.get(field, low)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise CheckpointError(f"{path}: {field}={v!r} is not an integer >= {low}; fix the field or remove it")


def read_config(directory, name: str) -> dict:
    return read_json(Path(directory) / name / "config.json", f"{name}: config file")


# ---- integrity -------------------------------------------------------------------

def _hash_file(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, HASH).hexdigest()


def _hash_many(paths: list) -> list[str]:
    """Hashes of many files, several at a time (hashlib releases the GIL: disk speed, all cores)."""
    if len(paths) < 2:
        return [_hash_file(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(paths))) as ex:
        return list(ex.map(_hash_file, paths))


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).as_posix() != CHECKSUMS)


def _is_layout_file(name: str) -> bool:
    """True for a file of the converted layout itself: the index and everything in a component's,
    the tokenizer's or the scheduler's folder (what loading reads)."""
    top = name.split("/", 1)[0]
    return name == INDEX or ("/" in name and (top in COMPONENTS or top in (TOKENIZER, SCHEDULER)))


def write_checksums(root) -> dict:
    """Record the hash and size of every file under `root` in `root/checksums.json` (written last)."""
    root = Path(root)
    names = _all_files(root)
    digests = _hash_many([root / n for n in names])
    record = {"algorithm": HASH, "files": {n: {HASH: h, "size": (root / n).stat().st_size}
                                           for n, h in zip(names, digests)}}
    (root / CHECKSUMS).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def read_checksums(directory) -> dict | None:
    """The `checksums.json` record of a converted directory, or None for one written before it existed."""
    path = Path(directory) / CHECKSUMS
    if not path.exists():
        return None
    record = read_json(path, "checksum record")
    files = record.get("files")
    if record.get("algorithm") != HASH or not isinstance(files, dict) or \
            not all(isinstance(v, dict) and isinstance(v.get(HASH), str) and isinstance(v.get("size"), int)
                    for v in files.values()):
        raise CheckpointError(f"checksum record {path} is damaged or not a {HASH} record; re-convert the "
                              f"checkpoint or restore {CHECKSUMS} from a good copy")
    return record


def _check_files(directory: Path, record: dict, components=None) -> dict:
    """Check the recorded files (those of `components` and the shared ones, or all) against the record."""
    keep = None if components is None else set(components) | {TOKENIZER, SCHEDULER}
    in_scope = lambda n: keep is None or "/" not in n or n.split("/", 1)[0] in keep
    files = {n: v for n, v in record["files"].items() if in_scope(n)}
    names = sorted(files)
    for n in names:  # cheap checks first: missing and truncated files need no hashing
        path = directory / n
        if not path.is_file():
            raise CheckpointNotFoundError(f"{path} is missing: the checkpoint is incomplete (its {CHECKSUMS} "
                                          f"lists {len(record['files'])} files); copy it again")
        size = path.stat().st_size
        if size != files[n]["size"]:
            how = "truncated (or edited)" if size < files[n]["size"] else "longer than recorded (edited?)"
            raise IntegrityError(f"{path} is {how} ({size} bytes, {files[n]['size']} recorded in {CHECKSUMS}); "
                                 f"the checkpoint is damaged: copy or convert it again")
    digests = _hash_many([directory / n for n in names])
    bad = [n for n, h in zip(names, digests) if h != files[n][HASH]]
    if bad:
        more = f" (and {len(bad) - 1} more file{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise IntegrityError(f"{directory / bad[0]}{more}: content differs from its {HASH} in {CHECKSUMS} "
                             f"(corrupted); copy or convert the checkpoint again")
    unrecorded = [n for n in _all_files(directory) if n not in record["files"] and in_scope(n)]
    # A record that leaves out a file the checkpoint is made of (emptied, or an entry removed)
    # would let that file change unnoticed: only files beside the layout (a README) may be unrecorded.
    uncovered = [n for n in unrecorded if _is_layout_file(n)]
    if uncovered:
        more = f" (and {len(uncovered) - 1} more)" if len(uncovered) > 1 else ""
        raise IntegrityError(f"{directory / uncovered[0]}{more} is not covered by {CHECKSUMS} (it lists "
                             f"{len(record['files'])} files): the record is incomplete or was edited; copy or "
                             f"convert the checkpoint again")
    return {"directory": str(directory.absolute()), "algorithm": HASH, "files": len(names),
            "bytes": int(sum(files[n]["size"] for n in names)), "unrecorded": unrecorded}


def verify_checkpoint(directory, *, components=None) -> dict:
    """Re-hash a converted checkpoint's files against its `checksums.json`.

    components: only the files of these networks (and the shared ones: index, tokenizer,
    scheduler); default every recorded file. Returns {"directory", "algorithm", "files"
    (number checked), "bytes", "unrecorded" (files beside the layout that are not in the
    record, e.g. a README added by hand; not an error)}. Raises CheckpointNotFoundError for
    a missing directory or file, IntegrityError for a truncated or corrupted file or for a
    file of the layout (index, network, tokenizer, scheduler) the record leaves out (an
    emptied or partial record), CheckpointError for a
    directory that is not a converted checkpoint or has no record (written before
    ti2v-jax recorded checksums: re-convert it to get one). Each message is one line
    naming the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory {directory} does not exist")
    index = read_index(directory)
    if index.get("format") != FORMAT:
        raise CheckpointError(f"{directory} is not a converted ti2v-jax checkpoint (only those carry "
                              f"{CHECKSUMS}); convert it with `ti2v-jax convert`")
    record = read_checksums(directory)
    if record is None:
        raise CheckpointError(f"{directory} has no {CHECKSUMS} (written by an older ti2v-jax); it cannot be "
                              f"verified: convert it again to record its checksums")
    return _check_files(directory, record, components)


def verify_for_loading(directory, components, *, verify: bool = True) -> dict | None:
    """What `load` runs: verify the files it reads, unless `verify=False` or TI2V_NO_VERIFY=1.

    A checkpoint without a record loads with a logged warning. Returns the summary, or None.
    """
    if not verify or env.flag(NO_VERIFY_ENV):
        return None
    directory = Path(directory)
    record = read_checksums(directory)
    if record is None:
        log.warning("%s has no %s (written by an older ti2v-jax): its files cannot be verified; convert it "
                    "again to record their checksums", directory, CHECKSUMS)
        return None
    return _check_files(directory, record, components)


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
        raise CheckpointError(f"{name}: the metadata of {path} is damaged or unreadable ({_one_line(e)}); "
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
        raise CheckpointError(f"{name}: cannot read the parameters in {path} ({_one_line(e)}); the data files "
                              f"are damaged: `ti2v-jax verify` names them; copy or convert the checkpoint "
                              f"again") from None
    finally:
        ckptr.close()
    nnx.replace_by_pure_dict(state, restored)
    return state


# ---- writing a converted directory ---------------------------------------------

def _owner_alive(name: str, prefix: str) -> bool:
    """For a temporary named `prefix + "<host>-<pid>-<hex>"`: False when its writer was a process
    of this host that is gone (killed), True otherwise (alive, another host's, or unknown)."""
    host, _, rest = name[len(prefix):].rpartition("-")[0].rpartition("-")
    try:
        pid = int(rest)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _remove_dead_temporaries(dst: Path) -> None:
    """Remove what killed writers of `dst` left beside it (`.<name>.tmp-*`, `.<name>.old-*`)."""
    for kind in ("tmp", "old"):
        prefix = f".{dst.name}.{kind}-"
        for p in dst.parent.glob(glob_escape(prefix) + "*"):
            if not _owner_alive(p.name, prefix):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(dst, *, overwrite: bool = False, protect=()):
    """Yield a fresh temporary directory beside `dst`; it becomes `dst` only on success.

    An existing `dst` is an error unless `overwrite`, in which case it is swapped out
    (rename, rename, delete) only once the new one is complete. Without `overwrite`, a
    `dst` that appeared meanwhile (another writer finished first) is an error too: nothing
    is replaced. On any error the temporary directory is removed and `dst` is left as it
    was. Temporaries left by a killed writer on this host are removed first (their names
    hold host and pid). `protect`: paths that must not be replaced (e.g. the source checkpoint).
    """
    dst = Path(dst).absolute()
    for p in protect:
        p = Path(p).absolute()
        if dst == p or p.is_relative_to(dst):
            raise InputError(f"destination {dst} would replace the source {p}")

    def exists_error():
        return OutputExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")

    if dst.exists() and not overwrite:
        raise exists_error()
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(dst)
    me = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = dst.parent / f".{dst.name}.tmp-{me}"
    tmp.mkdir()
    with cleanup.temporary(tmp):  # also removed when Ctrl-C ends the command at once
        try:
            yield tmp
            if not overwrite:
                try:  # a rename onto an existing (non-empty) directory fails: no silent replacement
                    if dst.exists() or dst.is_symlink():
                        raise exists_error()
                    os.rename(tmp, dst)
                except OSError as e:
                    if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                        raise exists_error() from None
                    raise
            elif dst.exists() or dst.is_symlink():
                old = dst.parent / f".{dst.name}.old-{me}"
                os.replace(dst, old)
                os.replace(tmp, dst)
                if old.is_dir() and not old.is_symlink():
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
    with atomic_directory(dst, overwrite=overwrite) as tmp:
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
                              f"{spec.class_name} ({_one_line(e)})") from None


def saved_dtype(directory) -> str:
    """The parameter dtype a converted directory was written in."""
    name = read_index(directory).get("dtype", "float32")
    if name not in DTYPES:
        raise CheckpointError(f"{Path(directory) / INDEX}: unknown dtype {name!r} (one of {', '.join(DTYPES)})")
    return name


def load_split(directory, name: str, *, dtype=None, param_dtype=None, sharding=None, attention=None,
               specs=COMPONENTS):
    """(graphdef, params, rest) of one component of a converted directory.

    dtype: computation dtype; param_dtype: parameter dtype (orbax casts while
    reading). Default: param_dtype = dtype, and both the saved dtype if neither is given.
    sharding: where the parameters are restored (default: the first device); orbax reads
    them straight there. attention: the attention implementation (see
    `ComponentSpec.build`). `rest` holds non-parameter state (none in our models;
    materialised if a model ever has some). No checksum verification here: `loading.load`
    verifies.
    """
    directory = Path(directory)
    if not is_converted(directory):
        raise CheckpointError(f"{directory} is not a converted ti2v-jax checkpoint (no {INDEX} with "
                              f'"format": "{FORMAT}"); convert it with `ti2v-jax convert`')
    index = read_index(directory)
    if name not in index.get("components", {}):
        raise CheckpointNotFoundError(f"{directory} has no component {name!r}; it has "
                                      f"{sorted(index.get('components', {}))}")
    spec = specs[name]
    config = read_config(directory, name)
    param_dtype = jnp.dtype(param_dtype or dtype or DTYPES[saved_dtype(directory)])
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
