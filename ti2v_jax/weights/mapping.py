"""The one PyTorch <-> Flax rename/reshape table.

Flax modules in `ti2v_jax.models` carry diffusers'/transformers' attribute names,
so a Flax parameter path maps to its PyTorch name mechanically:

    ('down_blocks', 0, 'resnets', 1, 'conv1', 'kernel') -> 'down_blocks.0.resnets.1.conv1.weight'

and a tensor's layout changes by its kind only (see `to_flax` / `to_torch`).
Checkpoint formats that used other names (diffusers' pre-0.16 VAE attention,
the original ModelScope layout) are handled by renaming the PyTorch side first
(`rename_keys`), never by a second table.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ti2v_jax.errors import CheckpointError

# Flax leaf name -> PyTorch leaf name.
# BatchNorm's statistics ("mean", "var"; the I3D of ti2v_jax.metrics) are PyTorch buffers.
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias",
              "mean": "running_mean", "var": "running_var"}


class ConversionError(CheckpointError):
    """A checkpoint does not fit the model: lists every offending tensor."""


@dataclasses.dataclass
class ConvertedComponent:
    """One network converted in memory (from either PyTorch layout)."""
    name: str
    config: dict
    params: dict            # {flax path: np.ndarray}
    skipped: list           # PyTorch keys left out on purpose (buffers, unused towers)
    weights_file: str       # the file (or shard index) the tensors came from
    model: object = None    # the abstract nnx model `params` were fitted to (ShapeDtypeStructs, no memory)


@dataclasses.dataclass
class ConversionReport:
    """What a conversion wrote: `summary()` is what `ti2v-jax convert` prints."""
    dst: Path
    dtype: str
    components: dict        # {name: {"class", "params", "weights_file", "skipped"}}
    skipped_reason: str = "buffers, not weights"

    def summary(self) -> str:
        lines = [f"converted to {self.dst} ({self.dtype})"]
        for name, c in self.components.items():
            lines.append(f"  {name}: {c['class']}, {c['params']} parameter tensors from {c['weights_file']}")
            if c["skipped"]:
                lines.append(f"    skipped, {self.skipped_reason} ({len(c['skipped'])}): {_group(c['skipped'])}")
        return "\n".join(lines)


def _group(names: list[str], limit: int = 8) -> str:
    """Names, or for long lists counts per leading prefix ('visual.*: 392 tensors')."""
    if len(names) <= limit:
        return ", ".join(names)
    groups: dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        depth = {"model": 2, "cond_stage_model": 2, "model_ema": 1, "transformer": 3}.get(parts[0], 1)
        key = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ({v})" for k, v in groups.items())


def torch_name(path: tuple, prefix: str = "") -> str:
    """Flax parameter path -> PyTorch state-dict key."""
    *mods, leaf = path
    if leaf not in LEAF_NAMES:
        raise ConversionError(f"no PyTorch name for Flax leaf {'/'.join(map(str, path))}")
    return prefix + ".".join(str(m) for m in mods + [LEAF_NAMES[leaf]])


def to_flax(leaf: str, array: np.ndarray, flax_shape: tuple) -> np.ndarray:
    """A PyTorch tensor in Flax layout.

    Linear (out, in) -> (in, out); Conv (out, in, *k) -> (*k, in, out).
    A PyTorch Conv used where Flax has a Linear (1x1 convs, Conv1d projections)
    has its singleton kernel axes squeezed; a Linear where Flax has a 1x1 Conv is
    expanded. Anything else must already match.
    """
    a = np.asarray(array)
    if leaf == "kernel":
        if a.ndim >= 3 and len(flax_shape) == 2 and all(s == 1 for s in a.shape[2:]):
            a = a.reshape(a.shape[:2])
        if a.ndim == 2 and len(flax_shape) > 2:
            a = a.reshape(a.shape + (1,) * (len(flax_shape) - 2))
        if a.ndim == 2:
            a = a.T
        elif a.ndim > 2:
            a = np.transpose(a, tuple(range(2, a.ndim)) + (1, 0))
    return a


def to_torch(leaf: str, array: np.ndarray) -> np.ndarray:
    """Inverse of `to_flax` for the plain (non-squeezed) layouts."""
    a = np.asarray(array)
    if leaf == "kernel":
        if a.ndim == 2:
            a = a.T
        elif a.ndim > 2:
            n = a.ndim
            a = np.transpose(a, (n - 1, n - 2) + tuple(range(n - 2)))
    return a


def rename_keys(state: Mapping[str, np.ndarray], rules: Iterable[tuple[str, str]]) -> dict:
    """Apply regex (pattern, replacement) rules to PyTorch keys, in order."""
    rules = [(re.compile(p), r) for p, r in rules]
    out = {}
    for k, v in state.items():
        new = k
        for pat, rep in rules:
            new = pat.sub(rep, new)
        if new in out:
            raise ConversionError(f"two PyTorch tensors map to {new!r} (one is {k!r})")
        out[new] = v
    return out


def fill_params(flat_params: Mapping[tuple, tuple], torch_state: Mapping[str, np.ndarray], *,
                prefix: str = "", ignore: Iterable[str] = (), dtype=None, component: str = "model"):
    """Map a PyTorch state dict onto Flax parameter paths, strictly.

    flat_params: {flax_path: shape}. ignore: regexes of PyTorch keys that are
    known non-parameters (buffers such as `position_ids`) or deliberately unused.
    Every other PyTorch tensor must be used exactly once, every Flax parameter
    filled with the right shape; otherwise ConversionError lists all offenders.
    Returns ({flax_path: np.ndarray}, [skipped PyTorch keys]).
    """
    ignore = [re.compile(p) for p in ignore]
    out, used, missing, bad_shape = {}, set(), [], []
    for path, shape in flat_params.items():
        key = torch_name(path, prefix)
        if key not in torch_state:
            missing.append(key)
            continue
        arr = to_flax(path[-1], torch_state[key], tuple(shape))
        if tuple(arr.shape) != tuple(shape):
            bad_shape.append(f"{key}: checkpoint {tuple(np.shape(torch_state[key]))} "
                             f"(as Flax {tuple(arr.shape)}), model expects {tuple(shape)}")
            continue
        used.add(key)
        out[path] = arr.astype(dtype) if dtype is not None else arr
    skipped = sorted(k for k in torch_state if k not in used and any(p.search(k) for p in ignore))
    extra = sorted(k for k in torch_state if k not in used and k not in skipped and k not in
                   {torch_name(p, prefix) for p in flat_params})
    if missing or extra or bad_shape:
        lines = [f"{component}: checkpoint does not match the model configuration"]
        for title, items in (("missing tensors", missing), ("unexpected tensors", extra),
                             ("wrong shapes", bad_shape)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {i}" for i in items]
        raise ConversionError("\n".join(lines))
    return out, skipped


def to_torch_state(flat_params: Mapping[tuple, np.ndarray], prefix: str = "") -> dict:
    """Flax parameters -> PyTorch-layout state dict (used by `make-tiny`)."""
    return {torch_name(p, prefix): to_torch(p[-1], np.asarray(v)) for p, v in flat_params.items()}
