"""The one way into a checkpoint: layout detection, in-memory conversion, writing.

Three layouts are read:

- "converted": a ti2v-jax directory (`checkpoint.py`), read by orbax, no conversion;
- "diffusers": a diffusers pipeline directory (`model_index.json` naming a pipeline
  class; unet/, vae/, text_encoder/ with safetensors or .bin weights, tokenizer/,
  scheduler/);
- "modelscope": the original ModelScope release (`configuration.json`, .pth files;
  see `modelscope.py`).

`layout.read_folder` tells them apart (the only place that does; `detect_format` gives its
answer) and every function here that reads a source takes its `CheckpointFolder` as well as a
path, so one load or conversion parses the source's index once. `convert_components` is
the one in-memory conversion of both PyTorch layouts: every model component (unet,
vae, text_encoder) strictly through `mapping.fill_params` (every PyTorch tensor used
once, every Flax parameter filled; only the model's `TORCH_IGNORE` keys, or tensors
ModelScope never uses, are left, and reported as skipped). `loading.load`,
`loading.describe` and `convert_checkpoint` (which writes `dst` atomically, with
checksums) all go through it. `export_diffusers` goes the other way, with numpy only,
for tiny test checkpoints.

Imports in `weights/` go one way: components <- mapping <- checkpoint <- torch_io,
modelscope <- convert (this module); nothing below imports this one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from flax import nnx

from ti2v_jax import atomic
from ti2v_jax.errors import CheckpointError, CheckpointNotFoundError, InputError, first_line
from ti2v_jax.weights import checkpoint as ckpt
from ti2v_jax.weights import layout, mapping, modelscope, torch_io
from ti2v_jax.weights.components import (
    COMPONENTS,
    SCHEDULER,
    SCHEDULER_CONFIG,
    TOKENIZER,
)
from ti2v_jax.weights.mapping import ConversionReport, ConvertedComponent

DEFAULT_COMPONENTS = ("unet", "vae", "text_encoder")
FORMATS = ("converted", "diffusers", "modelscope")
_SOURCE_FORMATS = ("auto", "diffusers", "modelscope")


# ---- which layout -----------------------------------------------------------------

def detect_format(directory) -> str:
    """"converted" | "diffusers" | "modelscope" for a checkpoint directory (`layout.read_folder`'s
    format: a load reads the folder once with `read_folder` and passes the record on instead).

    Raises CheckpointNotFoundError when `directory` does not exist (or is a file), and
    CheckpointError (one line) when it is none of the three layouts.
    """
    return layout.read_folder(directory).format


# ---- diffusers layout -------------------------------------------------------------

def read_model_index(src) -> dict:
    """The model_index.json of a diffusers directory (a `CheckpointFolder`'s as it was parsed)."""
    if isinstance(src, layout.CheckpointFolder):
        path, index = src.path / layout.INDEX, src.index
    else:
        path = Path(src) / layout.INDEX
        index = layout.read_json(path, "model index") if path.is_file() else None
    if index is None:
        raise CheckpointNotFoundError(f"{path} not found: {path.parent} is not a diffusers pipeline directory")
    if index.get("format") == layout.FORMAT:
        raise InputError(f"{path.parent} is already a converted ti2v-jax checkpoint")
    return index


def _check_class(index: dict, name: str, spec) -> None:
    entry = index.get(name)
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None \
            and entry[1] not in spec.torch_classes:
        raise mapping.ConversionError(f"{name}: model_index.json names {entry[1]}, "
                                      f"ti2v-jax converts {' / '.join(spec.torch_classes)}")


def _check_components(components, specs) -> tuple:
    components = tuple(components)
    unknown = [n for n in components if n not in specs]
    if unknown:
        raise InputError(f"unknown component(s) {unknown}; known: {sorted(specs)}")
    return components


def check_source(src, components=DEFAULT_COMPONENTS, *, variant=None, specs=COMPONENTS,
                 tokenizer: bool = True, scheduler: bool = True) -> dict:
    """Fail fast, naming the file, if anything a diffusers conversion needs is missing (src: a
    directory or its `CheckpointFolder`). Returns its model index."""
    index = read_model_index(src)
    src = layout.folder_path(src)
    for name in _check_components(components, specs):
        _check_class(index, name, specs[name])
        cfg = src / name / specs[name].config_name
        if not (src / name).is_dir():
            raise CheckpointNotFoundError(f"{name}: component directory {src / name} not found")
        if not cfg.is_file():
            raise CheckpointNotFoundError(f"{name}: config file {cfg} not found")
        torch_io.find_weights(src / name, variant)
    if tokenizer:
        _check_tokenizer_dir(src / TOKENIZER)
    if scheduler and not (src / SCHEDULER / SCHEDULER_CONFIG).is_file():
        raise CheckpointNotFoundError(f"scheduler config {src / SCHEDULER / SCHEDULER_CONFIG} not found")
    return index


def _check_tokenizer_dir(path: Path) -> None:
    if not path.is_dir() or not any(path.iterdir()):
        raise CheckpointNotFoundError(f"tokenizer directory {path} not found or empty (a CLIP tokenizer: "
                                      f"vocab.json, merges.txt, tokenizer_config.json); copy it from the "
                                      f"source checkpoint, or load with tokenizer=False")


def convert_component(src, name: str, *, dtype="float32", variant=None, specs=COMPONENTS,
                      attention=None) -> ConvertedComponent:
    """One diffusers component directory (`src/name`) -> Flax parameters, strictly; its `model` is
    the abstract network built in `dtype` with `attention` (see `ComponentSpec.build`)."""
    spec = specs[name]
    d = layout.folder_path(src) / name
    cfg_path = d / spec.config_name
    config = layout.read_json(cfg_path, f"{name}: config file")
    weights = torch_io.find_weights(d, variant)
    np_dtype = ckpt.DTYPES[ckpt.dtype_name(dtype)]
    try:
        abstract = spec.abstract(config, dtype=np_dtype, param_dtype=np_dtype, attention=attention)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise mapping.ConversionError(f"{name}: {cfg_path}: {first_line(e)}") from None
    state = torch_io.read_state(d, variant)
    state = mapping.rename_keys(state, spec.renames)
    params, skipped = mapping.fill_params(ckpt.param_shapes(abstract), state, ignore=spec.ignore,
                                          dtype=np_dtype, component=f"{name} ({weights})")
    return ConvertedComponent(name, config, params, skipped, weights.name, abstract)


# ---- the one in-memory conversion ----------------------------------------------------

def convert_components(src, *, dtype="float32", components=DEFAULT_COMPONENTS, variant=None,
                       source_format: str | None = None, specs=COMPONENTS, attention=None):
    """Yield `(name, mapping.ConvertedComponent)` of a diffusers or original ModelScope directory
    (or its `CheckpointFolder`), one network at a time (so only one network's PyTorch tensors are
    in memory at once).

    dtype: the converted parameters' dtype ("float32" | "bfloat16" | "float16"), or a
    {name: dtype} dict. source_format: "diffusers" | "modelscope" (default: detected).
    attention: what each component's abstract `model` (the one the parameters were fitted to,
    in that dtype) is built with. Nothing is written.
    """
    # The folder as detected, unless the caller says which layout it is (then read as that one).
    folder = src if isinstance(src, layout.CheckpointFolder) or source_format else layout.read_folder(src)
    src = layout.folder_path(src)
    fmt = source_format or folder.format
    components = _check_components(components, specs)
    if fmt == "converted":
        raise InputError(f"{src} is already a converted ti2v-jax checkpoint; load it, nothing to convert")
    if fmt not in ("diffusers", "modelscope"):
        raise InputError(f"source_format must be 'diffusers' or 'modelscope', got {fmt!r}")
    dtypes = dtype if isinstance(dtype, dict) else {n: dtype for n in components}
    if fmt == "diffusers":
        check_source(folder, components, variant=variant, specs=specs, tokenizer=False, scheduler=False)
        for name in components:
            yield name, convert_component(src, name, dtype=dtypes[name], variant=variant, specs=specs,
                                          attention=attention)
    else:
        configuration = modelscope.read_configuration(folder)
        modelscope.weight_files(src, configuration[1])  # fail fast, naming the missing file
        for name in components:
            yield name, modelscope.convert_components(src, dtypes[name], components=(name,), attention=attention,
                                                      configuration=configuration)[name]


def convert_in_memory(src, *, dtype="float32", variant=None, components=DEFAULT_COMPONENTS, specs=COMPONENTS):
    """{name: (config, nnx.State of Params)} straight from a diffusers or ModelScope directory,
    nothing written (host arrays; `loading.load` places them on devices itself)."""
    out = {}
    for name, c in convert_components(src, dtype=dtype, variant=variant, components=components, specs=specs):
        state = nnx.state(c.model, nnx.Param)
        nnx.replace_by_pure_dict(state, ckpt.nest(c.params))
        out[name] = (c.config, state)
    return out


def source_tokenizer(src, source_format: str):
    """The tokenizer of a diffusers or ModelScope directory or `CheckpointFolder` (ModelScope's is the
    CLIP BPE shipped with ti2v-jax), as `ti2v_jax.tokenizer.load_tokenizer` gives it."""
    from ti2v_jax.tokenizer import load_tokenizer

    src = layout.folder_path(src)
    if source_format == "modelscope":
        with tempfile.TemporaryDirectory() as tmp:
            return _load_tokenizer(load_tokenizer, modelscope.write_clip_tokenizer(Path(tmp) / TOKENIZER))
    _check_tokenizer_dir(Path(src) / TOKENIZER)
    return _load_tokenizer(load_tokenizer, Path(src) / TOKENIZER)


def _load_tokenizer(load, path):
    try:
        return load(path)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises many types for damaged tokenizer files
        raise CheckpointError(f"tokenizer {path} cannot be loaded ({first_line(e)}); copy the tokenizer "
                              f"files (vocab.json, merges.txt) again") from None


def source_scheduler_config(src, source_format: str) -> dict | None:
    """The DDIM scheduler config of a checkpoint directory (or `CheckpointFolder`) in any layout
    (None if it has none)."""
    if source_format == "modelscope":
        return modelscope.scheduler_config(modelscope.read_configuration(src)[0])
    path = layout.folder_path(src) / SCHEDULER / SCHEDULER_CONFIG
    return layout.read_json(path, "scheduler config") if path.is_file() else None


# ---- writing a converted directory ------------------------------------------------------

def convert_checkpoint(src, dst, dtype="float32", *, source_format: str = "auto", overwrite: bool = False,
                       variant=None, components=DEFAULT_COMPONENTS, specs=COMPONENTS) -> ConversionReport:
    """Convert `src` ("diffusers" or "modelscope" layout, or "auto": detected) into a ti2v-jax
    checkpoint at `dst`, with the checksums of every file it writes.

    dtype: "float32" | "bfloat16" | "float16", the stored parameter dtype.
    variant (diffusers): read e.g. `*.fp16.safetensors` first (default: plain files, then
    any variant). `dst` must not exist unless `overwrite`; it appears only once complete,
    and nothing is left behind on failure. Returns the report (`.summary()` describes what
    was converted and skipped).
    """
    if source_format not in _SOURCE_FORMATS:
        raise InputError(f"source_format must be one of {', '.join(_SOURCE_FORMATS)}, got {source_format!r}")
    folder = layout.read_folder(src)
    src, dst, fmt = folder.path, Path(dst), folder.format
    if fmt == "converted":
        raise InputError(f"{src} is already a converted ti2v-jax checkpoint")
    if source_format != "auto" and source_format != fmt:
        raise InputError(f"{src} is a {fmt} checkpoint, not {source_format}; drop --from (it is detected)")
    dtype = ckpt.dtype_name(dtype)
    components = _check_components(components, specs)
    if fmt == "diffusers":
        index = check_source(folder, components, variant=variant, specs=specs)
        meta = {"source_index": index, "source_format": "diffusers"}
    else:
        meta = {"source_index": None, "source_format": "modelscope", "source_configuration": folder.configuration}
    sched = source_scheduler_config(folder, fmt)
    report = {}
    with atomic.directory(dst, overwrite=overwrite, protect=[src]) as tmp:
        for name, c in convert_components(folder, dtype=dtype, components=components, variant=variant,
                                          source_format=fmt, specs=specs):
            cfg_file = src / name / specs[name].config_name if fmt == "diffusers" else None
            ckpt.write_component(tmp, name, c.config, ckpt.nest(c.params), config_file=cfg_file)
            report[name] = {"class": specs[name].class_name, "params": len(c.params),
                            "weights_file": c.weights_file, "skipped": c.skipped}
            del c
        if fmt == "diffusers":
            ckpt.write_extras(tmp, tokenizer_dir=src / TOKENIZER, scheduler_config=src / SCHEDULER / SCHEDULER_CONFIG)
        else:
            modelscope.write_clip_tokenizer(tmp / TOKENIZER)
            ckpt.write_extras(tmp, scheduler_config=sched)
        ckpt.write_index(tmp, dtype=dtype, components=report, source=src.absolute(), **meta)
    return ConversionReport(dst, dtype, report,
                            skipped_reason="unused by ModelScope" if fmt == "modelscope" else "buffers, not weights")


def convert_diffusers(src, dst, dtype="float32", *, overwrite: bool = False, variant=None,
                      components=DEFAULT_COMPONENTS, specs=COMPONENTS) -> ConversionReport:
    """`convert_checkpoint` of a diffusers pipeline directory."""
    return convert_checkpoint(src, dst, dtype, source_format="diffusers", overwrite=overwrite, variant=variant,
                              components=components, specs=specs)


def convert_modelscope(src, dst, dtype="float32", overwrite: bool = False) -> ConversionReport:
    """`convert_checkpoint` of an original ModelScope release directory; its report's `skipped`
    lists, by name, the checkpoint tensors ModelScope itself never uses."""
    return convert_checkpoint(src, dst, dtype, source_format="modelscope", overwrite=overwrite)


# ---- the other way: Flax -> diffusers layout (tests, make-tiny) --------------------------

def export_diffusers(models_or_params: dict, configs: dict, dst, *, tokenizer_dir=None, scheduler_config=None,
                     pipeline_class: str = "TextToVideoSDPipeline", overwrite: bool = False,
                     specs=COMPONENTS) -> Path:
    """Write Flax models as a diffusers-layout directory (safetensors, numpy only).

    models_or_params: {component: nnx.Module | nnx.State | {flax path: array}}.
    Tensors are in the plain PyTorch layouts of `mapping.to_torch`. diffusers and
    transformers load the result with `from_pretrained` (tested) as long as our models
    use a Conv wherever PyTorch has one (a 1x1 Conv exported from a Flax Linear
    would be 2-D: our converter reads that back, diffusers would not). The bytes depend
    only on the parameters (tensors in sorted order, no timestamps).
    """
    from safetensors.numpy import save_file

    dst = Path(dst)
    libraries = {"unet": "diffusers", "vae": "diffusers", "text_encoder": "transformers"}
    index = {"_class_name": pipeline_class, "_diffusers_version": "0.0.0 (ti2v-jax export)"}
    with atomic.directory(dst, overwrite=overwrite) as tmp:
        for name, m in models_or_params.items():
            spec = specs[name]
            if isinstance(m, nnx.Module):
                m = nnx.state(m, nnx.Param)
            if isinstance(m, nnx.State):
                m = {p: v.get_value() for p, v in nnx.to_flat_state(m)}
            flat = {p: np.asarray(v) for p, v in m.items()}
            state = {k: np.ascontiguousarray(v) for k, v in mapping.to_torch_state(flat).items()}
            (tmp / name).mkdir()
            save_file(dict(sorted(state.items())), str(tmp / name / f"{spec.weights_stem}.safetensors"))
            config = dict(configs[name])
            if libraries.get(name) == "diffusers":
                config.setdefault("_class_name", spec.torch_classes[0])
            else:
                config.setdefault("architectures", [spec.torch_classes[0]])
            (tmp / name / spec.config_name).write_text(json.dumps(config, indent=2) + "\n")
            index[name] = [libraries.get(name, "diffusers"), spec.torch_classes[0]]
        ckpt.write_extras(tmp, tokenizer_dir=tokenizer_dir, scheduler_config=scheduler_config)
        if tokenizer_dir is not None:
            index[TOKENIZER] = ["transformers", "CLIPTokenizer"]
        if scheduler_config is not None:
            sched = json.loads(Path(scheduler_config).read_text()) if not isinstance(scheduler_config, dict) \
                else scheduler_config
            index[SCHEDULER] = ["diffusers", sched.get("_class_name", "DDIMScheduler")]
        (tmp / layout.INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return dst
