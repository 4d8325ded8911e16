"""Compiled programs saved once and loaded by every host of a run: compile once for a pod.

    ti2v-jax plan --target v5e:16x16 --model ckpt/ --save-executables exe/   # any host, no TPU needed
    ti2v-jax batch --model ckpt/ --executables exe/ ...                     # every host of the pod

A folder holds `manifest.json` (the versions of jax, jaxlib and libtpu that compiled the
programs, and per program its key) and one file per program (the executable serialised by
`jax.experimental.serialize_executable`, with its argument and result tree structures).

A program's key says everything a compiled program depends on: the program and its static
settings, the shapes and dtypes of its arguments (the batch per call included), the
networks' graphs (their configs, dtypes and attention kernels) and weight shapes, and the
devices (platform, kind, count). The pipeline uses a saved program only when its key and
the versions match exactly; otherwise it compiles, and says in one line why.

Loading an executable runs code from the file: load only folders you made (as with pickles).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

from ti2v_jax import atomic
from ti2v_jax.errors import CheckpointError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1


def versions() -> dict:
    """The compiler's versions a saved program is bound to."""
    out = {"jax": jax.__version__}
    for dist in ("jaxlib", "libtpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shapes(tree) -> list:
    return [[list(np.shape(x)), str(x.dtype)] for x in jax.tree.leaves(tree)]


def program_key(*, fn, params, args, devices) -> dict:
    """The key of a batched program (`parallel`'s callable `fn` = partial(program, spec, **static))
    called on `params` and `args` (arrays or ShapeDtypeStructs) over `devices`."""
    spec = fn.args[0]
    static = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(fn.keywords.items())}
    # A graph's text names the functions it holds with their addresses: those differ per process.
    graphs = {n: _digest(re.sub(r" at 0x[0-9a-f]+", "", repr(spec.graphdefs[n]))) for n in ("unet", "vae")}
    return {
        "program": fn.func.__name__,
        "static": static,
        "num_frames": spec.num_frames,
        "abar": _digest(np.asarray(spec.abar, np.float64).tobytes().hex()),
        "dtypes": {n: d.name for n, d in spec.dtypes.items()},
        "graphs": graphs,
        "params": _digest(json.dumps(_shapes(params))),
        "args": _shapes(args),
        "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)},
    }


def _file_of(key: dict) -> str:
    return f"program-{_digest(json.dumps(key, sort_keys=True))}.bin"


def save(directory, compiled, *, key: dict, target: str) -> Path:
    """Add `compiled` (a `jax.stages.Compiled`) under `key` to the folder `directory`."""
    from jax.experimental import serialize_executable

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(directory) if (directory / MANIFEST).is_file() else \
        {"format": FORMAT, "versions": versions(), "programs": []}
    if manifest["versions"] != versions():
        raise CheckpointError(f"{directory} holds programs compiled by {manifest['versions']}, this is "
                              f"{versions()}: save into another folder")
    payload, in_tree, out_tree = serialize_executable.serialize(compiled)
    name = _file_of(key)
    atomic.write_bytes(directory / name, pickle.dumps((payload, in_tree, out_tree)))
    manifest["programs"] = [p for p in manifest["programs"] if p["file"] != name] + \
        [{"file": name, "target": target, "key": key}]
    atomic.write_bytes(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return directory / name


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("programs"), list):
            raise ValueError("not a ti2v-jax executables manifest")
    except FileNotFoundError:
        raise CheckpointError(f"{directory} holds no saved programs ({MANIFEST} is missing); make them with "
                              f"`ti2v-jax plan --save-executables {directory}`") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable: {e}") from None
    return manifest


class Executables:
    """The saved programs of a folder, loaded on first use for the devices they are called on."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.manifest = _read_manifest(self.directory)
        self.loaded: dict = {}
        self.said: set = set()

    def batch_per_device(self) -> int | None:
        """Items per device of the saved programs' calls (the largest, where several were
        saved): what `ti2v-jax batch --executables` runs per device unless told otherwise."""
        sizes = [p["key"]["args"][0][0][0] // max(1, p["key"]["devices"]["count"]) for p in self.manifest["programs"]
                 if p["key"].get("args")]
        return max(sizes) if sizes else None

    def get(self, key: dict, devices):
        """The loaded program saved under `key`, or None (after one logged line saying why)."""
        name = _file_of(key)
        if name in self.loaded:
            return self.loaded[name]
        why = None
        if self.manifest["versions"] != versions():
            why = f"they were compiled by {self.manifest['versions']}, this is {versions()}"
        elif not any(p["file"] == name for p in self.manifest["programs"]):
            near = [p["key"] for p in self.manifest["programs"] if p["key"]["program"] == key["program"]]
            diff = sorted({k for p in near for k in key if p.get(k) != key[k]})
            why = ("none was saved for " + key["program"]) if not near else \
                f"none matches this call (differs in {', '.join(diff)})"
        if why is not None:
            if why not in self.said:
                self.said.add(why)
                log.info("compiling instead of using the programs saved in %s: %s", self.directory, why)
            return None
        from jax.experimental import serialize_executable

        payload, in_tree, out_tree = pickle.loads((self.directory / name).read_bytes())
        compiled = serialize_executable.deserialize_and_load(
            payload, in_tree, out_tree, backend=devices[0].platform, execution_devices=list(devices))
        self.loaded[name] = compiled
        return compiled
