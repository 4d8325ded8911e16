"""Test glue: a PyTorch module's weights into our Flax model, through `ti2v_jax.weights.mapping`."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Callable, Iterable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ti2v_jax.weights import mapping


def perturb_(module, scale: float = 0.02, seed: int = 0):
    """Add Gaussian noise to every parameter in place (diffusers zero-inits some layers)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def torch_state_numpy(module) -> dict:
    """A PyTorch module's state dict as float numpy arrays."""
    return {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items()}


def flax_from_state(build: Callable[[], nnx.Module], torch_state: dict, *, renames: Iterable = (),
                    ignore: Iterable = (), prefix: str = "", component: str = "model"):
    """(our Flax model filled from a PyTorch-layout state dict, skipped keys); `build()` is traced abstractly.

    Strict: `mapping.fill_params` raises on any missing, unexpected or wrong-shape tensor.
    """
    abstract = nnx.eval_shape(build)
    flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    shapes = {path: v.get_value().shape for path, v in flat}
    dtypes = {path: v.get_value().dtype for path, v in flat}
    state = mapping.rename_keys(torch_state, renames)
    params, skipped = mapping.fill_params(shapes, state, prefix=prefix, ignore=ignore, component=component)
    nnx.update(abstract, nnx.from_flat_state({p: jnp.asarray(np.asarray(a), dtypes[p]) for p, a in params.items()}))
    leftover = [p for p, v in nnx.to_flat_state(nnx.state(abstract))
                if not isinstance(v.get_value(), (jnp.ndarray, np.ndarray))]
    if leftover:
        raise ValueError(f"{component}: state left unfilled (not parameters): {leftover}")
    return abstract, skipped


def flax_from_torch(build: Callable[[], nnx.Module], torch_module, **kw):
    """Our Flax model with the weights of `torch_module` (see `flax_from_state`)."""
    return flax_from_state(build, torch_state_numpy(torch_module), **kw)[0]


def count_folder_reads(monkeypatch, directory) -> collections.Counter:
    """From now on, count in the returned Counter what reading the checkpoint `directory` costs:
    "parse <file>": JSON parses of each of its own files (the tokenizer's and orbax's aside),
    recognised by their bytes; "folder": `CheckpointFolder` records made (one per layout detection);
    "build <network>": models constructed (`ComponentSpec.build`, abstract or not)."""
    from ti2v_jax.weights import components, layout

    directory = Path(directory)
    names = {f.read_bytes(): f.relative_to(directory).as_posix() for f in directory.rglob("*.json")
             if f.relative_to(directory).parts[0] != "tokenizer" and "params" not in f.relative_to(directory).parts}
    counts = collections.Counter()
    loads, build, init = json.loads, components.ComponentSpec.build, layout.CheckpointFolder.__init__

    def counted_loads(s, *args, **kwargs):
        name = names.get(s.encode() if isinstance(s, str) else bytes(s))
        if name is not None:
            counts[f"parse {name}"] += 1
        return loads(s, *args, **kwargs)

    def counted_build(spec, *args, **kwargs):
        counts[f"build {spec.name}"] += 1
        return build(spec, *args, **kwargs)

    def counted_init(folder, *args, **kwargs):
        counts["folder"] += 1
        init(folder, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counted_loads)
    monkeypatch.setattr(components.ComponentSpec, "build", counted_build)
    monkeypatch.setattr(layout.CheckpointFolder, "__init__", counted_init)
    return counts
