"""Read a diffusers/transformers component directory's weights as numpy arrays.

Understands the file names `save_pretrained` writes:

    diffusion_pytorch_model.safetensors   model.safetensors   (single file)
    diffusion_pytorch_model.bin           pytorch_model.bin   (torch pickle)
    <name>.safetensors.index.json  / <name>.bin.index.json   (sharded, any of the above)
    and their variants, e.g. diffusion_pytorch_model.fp16.safetensors,
    model.safetensors.index.fp16.json

Safetensors are read with numpy only (bfloat16 as `ml_dtypes.bfloat16`); torch is
imported, lazily, only for `.bin`/`.pth` pickles.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from ti2v_jax.errors import CheckpointError, CheckpointNotFoundError, first_line

WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
_EXTENSIONS = ("safetensors", "bin")  # preference order

# safetensors dtype tag -> numpy dtype, for the manual reader.
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


class WeightsNotFoundError(CheckpointNotFoundError):
    """A component directory holds no weights file we can read."""


def _variant_name(filename: str, variant: str | None) -> str:
    """diffusers/transformers `_add_variant`: 'a.b.json' + fp16 -> 'a.b.fp16.json'."""
    if not variant:
        return filename
    parts = filename.split(".")
    return ".".join(parts[:-1] + [variant, parts[-1]])


def _candidates(variant: str | None):
    for ext in _EXTENSIONS:
        for stem in WEIGHT_STEMS:
            yield _variant_name(f"{stem}.{ext}", variant)
            yield _variant_name(f"{stem}.{ext}.index.json", variant)


def find_weights(directory, variant: str | None = None) -> Path:
    """The weights file (or shard index) of a component directory.

    Safetensors are preferred to pickles. Without `variant`, the plain files are
    preferred, then any variant (e.g. only `*.fp16.safetensors` present).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise WeightsNotFoundError(f"component directory not found: {directory}")
    variants = [variant] if variant else [None]
    if not variant:
        found = {p.name.split(".")[-2] for p in directory.iterdir()
                 if p.suffix in (".safetensors", ".bin", ".json") and p.name.count(".") >= 2}
        variants += sorted(v for v in found if v not in ("safetensors", "bin", "index"))
    for v in variants:
        for name in _candidates(v):
            if (directory / name).is_file():
                return directory / name
    names = sorted(p.name for p in directory.iterdir())
    raise WeightsNotFoundError(
        f"no weights in {directory} (looked for {', '.join(_candidates(variant))}); "
        f"the directory holds: {', '.join(names) or 'nothing'}")


def read_safetensors(path) -> dict[str, np.ndarray]:
    """A .safetensors file as {name: np.ndarray}, without torch.

    A file safetensors refuses (an impossible header, truncated data) is a one-line
    CheckpointError naming it.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(e)}); it is damaged or "
                              f"incomplete: download or copy it again") from None
    except (TypeError, ValueError, KeyError, AttributeError):
        # Older safetensors builds cannot hand bfloat16 to numpy: parse the file.
        try:
            return _read_safetensors_manually(path)
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


def _read_safetensors_manually(path) -> dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CheckpointError(f"{path}: safetensors header of {n} bytes in a file of {len(data)}")
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= len(data) - base:
            raise CheckpointError(f"{path}: tensor {name} lies outside the file (truncated?)")
        arr = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading PyTorch pickles (.bin/.pth) needs torch: `pip install torch` "
                          "(or `pip install ti2v-jax[convert]`); safetensors checkpoints do not") from e
    return torch


def torch_to_numpy(t) -> np.ndarray:
    """A torch tensor as numpy, keeping bfloat16 (as ml_dtypes.bfloat16)."""
    torch = _import_torch()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def load_torch_state(path) -> dict:
    """A .bin/.pth state dict as torch tensors (unwrapping {"state_dict": ...}), loaded with
    weights_only=True and memory-mapped where the file allows (a tensor never converted is
    never read). One-line CheckpointError for a pickle of other objects or an unreadable file."""
    import pickle

    torch = _import_torch()
    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: holds pickled objects other than tensors, which ti2v-jax never "
                              f"unpickles; it needs a file of plain tensors (a state dict)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_torch_pickle(path) -> dict[str, np.ndarray]:
    """A .bin/.pth state dict as {name: np.ndarray} (see `load_torch_state`)."""
    return {k: torch_to_numpy(v) for k, v in load_torch_state(path).items()}


def read_file(path) -> dict[str, np.ndarray]:
    """One weights file (.safetensors, .bin, .pth, .pt, .ckpt) as {name: np.ndarray}."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".bin", ".pth", ".pt", ".ckpt"):
        return read_torch_pickle(path)
    raise CheckpointError(f"unknown weights file type: {path}")


def read_sharded(index_path) -> dict[str, np.ndarray]:
    """A sharded checkpoint from its `*.index.json`; every listed tensor must be found."""
    index_path = Path(index_path)
    from ti2v_jax.weights.layout import read_json

    weight_map = read_json(index_path, "shard index").get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"shard index {index_path} has no weight_map object")
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise WeightsNotFoundError(f"shard {shard_path} listed in {index_path} is missing")
        for k, v in read_file(shard_path).items():
            if k in out:
                raise CheckpointError(f"tensor {k} appears in two shards of {index_path}")
            out[k] = v
    absent = sorted(set(weight_map) - set(out))
    if absent:
        raise CheckpointError(f"{index_path} lists tensors its shards do not hold: {', '.join(absent[:20])}")
    return out


def read_state(directory, variant: str | None = None) -> dict[str, np.ndarray]:
    """All weights of a component directory as {PyTorch name: np.ndarray}."""
    path = find_weights(directory, variant)
    return read_sharded(path) if path.name.endswith(".index.json") or ".index." in path.name \
        else read_file(path)
