"""`loading.load`: one way into a checkpoint of any layout, per-network dtypes, placement,
the attention choice in the model spec; `detect_format`; no import cycle in `weights/`."""

from __future__ import annotations

import ast
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ti2v_jax import loading
from ti2v_jax import parallel as par
from ti2v_jax.errors import CheckpointError, CheckpointNotFoundError, SettingsError
from ti2v_jax.weights.convert import detect_format

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "ti2v_jax" / "weights"
DEFAULT_MODEL = ROOT / "ti2v_jax" / "assets" / "default_model"


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_detect_format(tiny_diffusers_dir, tiny_converted_dir, tmp_path):
    assert detect_format(tiny_converted_dir) == "converted"
    assert detect_format(tiny_diffusers_dir) == "diffusers"
    assert detect_format(DEFAULT_MODEL) == "converted"
    ms = tmp_path / "ms"
    ms.mkdir()
    (ms / "configuration.json").write_text(json.dumps({"model": {"model_cfg": {"unet_dim": 32}}}))
    assert detect_format(ms) == "modelscope"
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        detect_format(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointNotFoundError, match="is a file"):
        detect_format(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint") as e:
        detect_format(empty)
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_index.json").write_text("{ truncated")
    with pytest.raises(CheckpointError, match="not valid JSON") as e:
        loading.load(bad)
    assert "\n" not in str(e.value) and "model_index.json" in str(e.value)


def test_load_takes_every_layout_and_logs_the_conversion(tiny_diffusers_dir, tiny_converted_dir, caplog):
    ids = np.zeros((1, 77), np.int32)
    ids[0, :3] = [5, 6, 7]
    with caplog.at_level(logging.INFO, logger="ti2v_jax.loading"):
        mem = loading.load(tiny_diffusers_dir, components=("text_encoder",))
    assert any("converting it in memory" in r.getMessage() for r in caplog.records)
    disk = loading.load(tiny_converted_dir, components=("text_encoder",))
    for k, v in _flat(disk.params).items():
        np.testing.assert_array_equal(_flat(mem.params)[k], v, err_msg=k)
    np.testing.assert_array_equal(np.asarray(mem.text_encode(mem.text_encoder_params, ids)),
                                  np.asarray(disk.text_encode(disk.text_encoder_params, ids)))
    assert mem.tokenizer is not None and disk.tokenizer is not None
    assert mem.scheduler_config == disk.scheduler_config


def test_describe_every_layout(tiny_diffusers_dir, tiny_converted_dir):
    a, b = loading.describe(tiny_converted_dir), loading.describe(tiny_diffusers_dir)
    assert a["format"].startswith("ti2v-jax") and b["format"].startswith("diffusers")
    assert a["total_params"] == b["total_params"] > 0
    assert a["checksums"] == "checksums.json"


@pytest.mark.slow
def test_per_network_dtypes(tiny_converted_dir, tiny_diffusers_dir):
    for src in (tiny_converted_dir, tiny_diffusers_dir):
        c = loading.load(src, dtype="bfloat16", component_dtypes={"vae": "float32", "text_encoder": jnp.float32},
                         tokenizer=False)
        assert c.dtypes == {"unet": jnp.dtype(jnp.bfloat16), "vae": jnp.dtype(jnp.float32),
                            "text_encoder": jnp.dtype(jnp.float32)}
        for name, dt in c.dtypes.items():
            assert {x.dtype for x in jax.tree.leaves(c.params[name])} == {dt}, name
    # the compute dtype follows: the bf16 U-Net returns bf16
    unet = c.configs["unet"]
    x = jnp.zeros((1, 2, unet["sample_size"], unet["sample_size"], 4), jnp.bfloat16)
    ctx = jnp.zeros((1, 77, unet["cross_attention_dim"]), jnp.bfloat16)
    assert c.unet_apply(c.unet_params, x, jnp.array([10]), ctx).dtype == jnp.bfloat16
    # default: as saved
    assert loading.load(tiny_converted_dir, components=("vae",), tokenizer=False).dtypes == {
        "vae": jnp.dtype(jnp.float32)}
    with pytest.raises(SettingsError, match="component_dtypes"):
        loading.load(tiny_converted_dir, component_dtypes={"unte": "float32"})
    with pytest.raises(SettingsError, match="dtype"):
        loading.load(tiny_converted_dir, dtype="int8")


def test_devices_place_parameters_once(tiny_converted_dir):
    dev = jax.devices()[-1]
    c = loading.load(tiny_converted_dir, components=("vae",), tokenizer=False, devices=[dev])
    want = par.replicated([dev])
    assert all(x.sharding.is_equivalent_to(want, x.ndim) for x in jax.tree.leaves(c.params))


def test_attention_is_part_of_the_model_spec(tiny_converted_dir):
    """The attention choice lands in the graphdef (hence in compiled programs' keys)."""
    import inspect

    from ti2v_jax.weights.components import COMPONENTS

    if "attention" not in inspect.signature(COMPONENTS["text_encoder"].model_class.__init__).parameters:
        pytest.skip("the models do not take an attention keyword yet")
    auto = loading.load(tiny_converted_dir, components=("text_encoder",), tokenizer=False)
    xla = loading.load(tiny_converted_dir, components=("text_encoder",), tokenizer=False, attention="xla")
    assert xla.text_encoder[0] != auto.text_encoder[0] or "xla" in repr(xla.text_encoder[0])
    ids = np.ones((1, 77), np.int32)
    np.testing.assert_allclose(np.asarray(xla.text_encode(xla.text_encoder_params, ids)),
                               np.asarray(auto.text_encode(auto.text_encoder_params, ids)), atol=1e-5)


@pytest.mark.slow
def test_weights_modules_import_one_way():
    """Each weights module imports alone, and their imports form no cycle."""
    mods = sorted(p.stem for p in WEIGHTS.glob("*.py") if p.stem != "__init__")
    graph = {}
    for m in mods:
        deps = set()
        for node in ast.walk(ast.parse((WEIGHTS / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "ti2v_jax.weights":
                    deps |= {a.name for a in node.names}
                elif node.module.startswith("ti2v_jax.weights."):
                    deps.add(node.module.split(".")[2])
        graph[m] = sorted(deps & set(mods))
    print(graph)
    state = {}

    def visit(n, path):
        assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [n])}"
        if state.get(n) != 2:
            state[n] = 1
            for d in graph[n]:
                visit(d, path + [n])
            state[n] = 2

    for m in mods:
        visit(m, [])
    assert "convert" not in graph["modelscope"] and "modelscope" in graph["convert"]
    for m in mods:  # each alone, in a fresh interpreter
        out = subprocess.run([sys.executable, "-c", f"import ti2v_jax.weights.{m}"], capture_output=True, text=True,
                             cwd=ROOT, check=False)
        assert out.returncode == 0, (m, out.stderr[-2000:])


@pytest.mark.slow
def test_default_model_loads(caplog):
    with caplog.at_level(logging.WARNING):
        c = loading.load(DEFAULT_MODEL)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # it has a record: no warning
    assert set(c.params) == {"unet", "vae", "text_encoder"}


@pytest.mark.slow
def test_make_tiny_is_deterministic_and_refuses_an_existing_folder_at_once(tmp_path, monkeypatch):
    import hashlib

    from ti2v_jax import tiny
    from ti2v_jax.errors import InputError
    from ti2v_jax.tiny import make_tiny

    def digest(d):
        return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(d.rglob("*")) if p.is_file()}

    a, b, c = (make_tiny(tmp_path / n, seed=s) for n, s in (("a", 5), ("b", 5), ("c", 6)))
    assert digest(a) == digest(b)
    assert digest(a).keys() == digest(c).keys() and digest(a) != digest(c)
    assert digest(a)["unet/diffusion_pytorch_model.safetensors"] != digest(c)["unet/diffusion_pytorch_model.safetensors"]
    (tmp_path / "taken").mkdir()

    def no_work(*a, **k):
        raise AssertionError("make_tiny started drawing weights before refusing the folder")

    monkeypatch.setattr(tiny, "random_params", no_work)
    with pytest.raises(InputError, match="--overwrite") as e:
        make_tiny(tmp_path / "taken", seed=5)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert not any((tmp_path / "taken").iterdir())
    make_tiny(tmp_path / "a", seed=6, overwrite=True)
    assert digest(tmp_path / "a") == digest(c)
    shutil.rmtree(tmp_path / "b")


@pytest.mark.slow
def test_one_pass_over_the_folder(tiny_diffusers_layout_dir, tiny_converted_dir, monkeypatch):
    """A load reads its folder once (issue 33): one layout detection (one `CheckpointFolder`), each of
    the folder's JSON files parsed at most once, one model built (abstractly) per network. Before,
    a converted load parsed model_index.json 9 times and tested the format 4 times, and an
    in-memory conversion built two abstract models per network."""
    from helpers import count_folder_reads

    from ti2v_jax.pipeline import TI2VZeroPipeline

    networks = {f"build {n}": 1 for n in loading.MODEL_COMPONENTS}
    cases = (("load", tiny_converted_dir, loading.load, networks),
             ("load", tiny_diffusers_layout_dir, loading.load, networks),
             ("from_pretrained", DEFAULT_MODEL, TI2VZeroPipeline.from_pretrained, networks),
             ("from_pretrained", tiny_diffusers_layout_dir, TI2VZeroPipeline.from_pretrained, networks),
             ("describe", tiny_diffusers_layout_dir, loading.describe, networks),
             ("describe", tiny_converted_dir, loading.describe, {}))
    for what, directory, read, built in cases:
        with monkeypatch.context() as m:
            counts = count_folder_reads(m, directory)
            read(directory)
        print(what, directory.name, dict(counts))
        assert counts["folder"] == counts["parse model_index.json"] == 1, (what, directory, counts)
        assert {k: v for k, v in counts.items() if k.startswith("build ")} == built, (what, directory, counts)
        assert set(counts.values()) == {1}, (what, directory, counts)
