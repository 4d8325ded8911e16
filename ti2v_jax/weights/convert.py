"""diffusers-layout PyTorch checkpoint <-> converted Flax directory.

`convert_diffusers(src, dst)` reads `src/model_index.json`, converts every model
component (unet, vae, text_encoder) strictly through `mapping.fill_params` (every
PyTorch tensor used once, every Flax parameter filled; only the model's
`TORCH_IGNORE` keys may be left, and are reported as skipped), copies the
tokenizer and the scheduler config, and writes `dst` atomically (see
`checkpoint.py` for the layout). `export_diffusers` goes the other way, with
numpy only, for tiny test checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from ti2v_jax.weights import checkpoint as ckpt
from ti2v_jax.weights import mapping, torch_io
from ti2v_jax.weights.components import COMPONENTS, SCHEDULER, SCHEDULER_CONFIG, TOKENIZER

DEFAULT_COMPONENTS = ("unet", "vae", "text_encoder")


@dataclasses.dataclass
class ConvertedComponent:
    name: str
    config: dict
    params: dict            # {flax path: np.ndarray}
    skipped: list           # PyTorch keys matched by TORCH_IGNORE
    weights_file: str       # the file (or shard index) the tensors came from


@dataclasses.dataclass
class ConversionReport:
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


def read_model_index(src) -> dict:
    path = Path(src) / ckpt.INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {src} is not a diffusers pipeline directory")
    index = json.loads(path.read_text())
    if index.get("format") == ckpt.FORMAT:
        raise ValueError(f"{src} is already a converted ti2v-jax checkpoint")
    return index


def _check_class(index: dict, name: str, spec) -> None:
    entry = index.get(name)
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None \
            and entry[1] not in spec.torch_classes:
        raise mapping.ConversionError(f"{name}: model_index.json names {entry[1]}, "
                                      f"ti2v-jax converts {' / '.join(spec.torch_classes)}")


def check_source(src, components=DEFAULT_COMPONENTS, *, variant=None, specs=COMPONENTS) -> dict:
    """Fail fast, naming the file, if anything `convert_diffusers` needs is missing."""
    src = Path(src)
    index = read_model_index(src)
    for name in components:
        if name not in specs:
            raise ValueError(f"unknown component {name!r}; known: {sorted(specs)}")
        _check_class(index, name, specs[name])
        cfg = src / name / specs[name].config_name
        if not (src / name).is_dir():
            raise FileNotFoundError(f"{name}: component directory {src / name} not found")
        if not cfg.is_file():
            raise FileNotFoundError(f"{name}: config file {cfg} not found")
        torch_io.find_weights(src / name, variant)
    if not (src / TOKENIZER).is_dir() or not any((src / TOKENIZER).iterdir()):
        raise FileNotFoundError(f"tokenizer directory {src / TOKENIZER} not found or empty")
    if not (src / SCHEDULER / SCHEDULER_CONFIG).is_file():
        raise FileNotFoundError(f"scheduler config {src / SCHEDULER / SCHEDULER_CONFIG} not found")
    return index


def convert_component(src, name: str, *, dtype="float32", variant=None, specs=COMPONENTS) -> ConvertedComponent:
    """One component directory (`src/name`) -> Flax parameters, strictly."""
    spec = specs[name]
    d = Path(src) / name
    cfg_path = d / spec.config_name
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{name}: config file {cfg_path} not found")
    config = json.loads(cfg_path.read_text())
    weights = torch_io.find_weights(d, variant)
    try:
        abstract = spec.abstract(config)
    except ValueError as e:
        raise mapping.ConversionError(f"{name}: {cfg_path}: {e}") from e
    state = torch_io.read_state(d, variant)
    state = mapping.rename_keys(state, spec.renames)
    np_dtype = ckpt.DTYPES[ckpt.dtype_name(dtype)]
    params, skipped = mapping.fill_params(ckpt.param_shapes(abstract), state, ignore=spec.ignore,
                                          dtype=np_dtype, component=f"{name} ({weights})")
    return ConvertedComponent(name, config, params, skipped, weights.name)


def convert_diffusers(src, dst, dtype="float32", *, overwrite: bool = False, variant=None,
                      components=DEFAULT_COMPONENTS, specs=COMPONENTS) -> ConversionReport:
    """Convert a diffusers pipeline directory into a ti2v-jax checkpoint at `dst`.

    dtype: "float32" | "bfloat16" | "float16", the stored parameter dtype.
    variant: read e.g. `*.fp16.safetensors` first (default: plain files, then any variant).
    `dst` must not exist unless `overwrite`; it appears only once complete.
    """
    src, dst = Path(src), Path(dst)
    dtype = ckpt.dtype_name(dtype)
    index = check_source(src, components, variant=variant, specs=specs)
    report = {}
    with ckpt.atomic_directory(dst, overwrite=overwrite, protect=[src]) as tmp:
        for name in components:
            c = convert_component(src, name, dtype=dtype, variant=variant, specs=specs)
            ckpt.write_component(tmp, name, c.config, ckpt.nest(c.params), config_file=src / name / "config.json")
            report[name] = {"class": specs[name].class_name, "params": len(c.params),
                            "weights_file": c.weights_file, "skipped": c.skipped}
            del c
        ckpt.write_extras(tmp, tokenizer_dir=src / TOKENIZER, scheduler_config=src / SCHEDULER / SCHEDULER_CONFIG)
        ckpt.write_index(tmp, dtype=dtype, components=report, source=src.absolute(), source_index=index)
    return ConversionReport(dst, dtype, report)


def convert_checkpoint(src, dst, dtype="float32", *, source_format: str = "auto", overwrite: bool = False,
                       variant=None):
    """Convert `src` in whichever layout it is: "diffusers", "modelscope" (original release), or "auto".

    Returns the converter's report (`.summary()` describes what was converted and skipped).
    """
    from ti2v_jax.weights import modelscope

    if source_format not in ("auto", "diffusers", "modelscope"):
        raise ValueError(f"source_format must be 'auto', 'diffusers' or 'modelscope', got {source_format!r}")
    if source_format == "auto":
        if ckpt.is_converted(src):
            raise ValueError(f"{src} is already a converted ti2v-jax checkpoint")
        if ckpt.is_diffusers(src):
            source_format = "diffusers"
        elif modelscope.is_modelscope(src):
            source_format = "modelscope"
        else:
            raise FileNotFoundError(f"{src} is neither a diffusers pipeline directory ({ckpt.INDEX} naming a "
                                    f"pipeline) nor an original ModelScope release ({modelscope.CONFIGURATION} "
                                    f"with model.model_cfg)")
    if source_format == "modelscope":
        return modelscope.convert_modelscope(src, dst, dtype, overwrite=overwrite)
    return convert_diffusers(src, dst, dtype, overwrite=overwrite, variant=variant)


def export_diffusers(models_or_params: dict, configs: dict, dst, *, tokenizer_dir=None, scheduler_config=None,
                     pipeline_class: str = "TextToVideoSDPipeline", overwrite: bool = False,
                     specs=COMPONENTS) -> Path:
    """Write Flax models as a diffusers-layout directory (safetensors, numpy only).

    models_or_params: {component: nnx.Module | nnx.State | {flax path: array}}.
    Tensors are in the plain PyTorch layouts of `mapping.to_torch`. diffusers and
    transformers load the result with `from_pretrained` (tested) as long as our models
    use a Conv wherever PyTorch has one (a 1x1 Conv exported from a Flax Linear
    would be 2-D: our converter reads that back, diffusers would not).
    """
    from safetensors.numpy import save_file

    dst = Path(dst)
    libraries = {"unet": "diffusers", "vae": "diffusers", "text_encoder": "transformers"}
    index = {"_class_name": pipeline_class, "_diffusers_version": "0.0.0 (ti2v-jax export)"}
    with ckpt.atomic_directory(dst, overwrite=overwrite) as tmp:
        for name, m in models_or_params.items():
            spec = specs[name]
            if isinstance(m, nnx.Module):
                m = nnx.state(m, nnx.Param)
            if isinstance(m, nnx.State):
                m = {p: v.get_value() for p, v in nnx.to_flat_state(m)}
            flat = {p: np.asarray(v) for p, v in m.items()}
            state = {k: np.ascontiguousarray(v) for k, v in mapping.to_torch_state(flat).items()}
            (tmp / name).mkdir()
            save_file(state, str(tmp / name / f"{spec.weights_stem}.safetensors"))
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
        (tmp / ckpt.INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return dst


def convert_in_memory(src, *, dtype="float32", variant=None, components=DEFAULT_COMPONENTS, specs=COMPONENTS):
    """{name: (config, nnx.State of Params)} straight from a diffusers directory, nothing written."""
    out = {}
    check_source(src, components, variant=variant, specs=specs)
    for name in components:
        c = convert_component(src, name, dtype=dtype, variant=variant, specs=specs)
        dt = ckpt.DTYPES[ckpt.dtype_name(dtype)]
        abstract = specs[name].abstract(c.config, dtype=dt, param_dtype=dt)
        state = nnx.state(abstract, nnx.Param)
        nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, ckpt.nest(c.params)))
        out[name] = (c.config, state)
    return out
