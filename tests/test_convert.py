"""Checkpoint conversion: diffusers/transformers PyTorch -> ti2v-jax, parity, formats, failures."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from ti2v_jax import MS17B_CONFIGS, loading
from ti2v_jax.errors import CheckpointError
from ti2v_jax.weights import checkpoint as ckpt
from ti2v_jax.weights import layout, torch_io
from ti2v_jax.weights.convert import (
    convert_diffusers,
    convert_in_memory,
    export_diffusers,
)
from ti2v_jax.weights.mapping import ConversionError

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4


def _flat(state) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _leftovers(parent: Path, name: str) -> list:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# ---- torch_io -------------------------------------------------------------------

def test_safetensors_bf16_fp16_without_torch(tmp_path):
    from safetensors.numpy import save_file

    a = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    b = np.linspace(-1, 1, 5).astype(np.float16)
    save_file({"a": a, "b": b}, str(tmp_path / "model.safetensors"))
    for got in (torch_io.read_safetensors(tmp_path / "model.safetensors"),
                torch_io._read_safetensors_manually(tmp_path / "model.safetensors")):
        assert got["a"].dtype == ml_dtypes.bfloat16 and got["b"].dtype == np.float16
        np.testing.assert_array_equal(got["a"], a)
        np.testing.assert_array_equal(got["b"], b)


def test_find_weights_preference_and_errors(tmp_path):
    with pytest.raises(torch_io.WeightsNotFoundError, match="no weights in"):
        torch_io.find_weights(tmp_path)
    (tmp_path / "diffusion_pytorch_model.fp16.safetensors").touch()
    assert torch_io.find_weights(tmp_path).name == "diffusion_pytorch_model.fp16.safetensors"
    (tmp_path / "diffusion_pytorch_model.bin").touch()
    assert torch_io.find_weights(tmp_path).name == "diffusion_pytorch_model.bin"
    assert torch_io.find_weights(tmp_path, "fp16").name == "diffusion_pytorch_model.fp16.safetensors"
    (tmp_path / "diffusion_pytorch_model.safetensors").touch()
    assert torch_io.find_weights(tmp_path).name == "diffusion_pytorch_model.safetensors"
    # A shard index naming a shard that is not there.
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-1.safetensors"}}))
    with pytest.raises(torch_io.WeightsNotFoundError, match="model-1.safetensors"):
        torch_io.read_state(d)


# ---- parity against PyTorch -------------------------------------------------------

@pytest.fixture(scope="module")
def torch_models(tiny_diffusers_dir):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel

    d = tiny_diffusers_dir
    return {"unet": UNet3DConditionModel.from_pretrained(d / "unet").eval(),
            "vae": AutoencoderKL.from_pretrained(d / "vae").eval(),
            "text_encoder": CLIPTextModel.from_pretrained(d / "text_encoder").eval()}


@pytest.fixture(scope="module")
def loaded(tiny_converted_dir):
    return loading.load(tiny_converted_dir)


def _inputs():
    rng = np.random.default_rng(0)
    return dict(x=rng.standard_normal((2, 3, 16, 16, 4)).astype(np.float32),
                t=np.array([10, 700], np.int32),
                ctx=rng.standard_normal((2, 77, 32)).astype(np.float32),
                frames=rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32),
                ids=np.array([[528, 320, 519, 529] + [0] * 73, [528, 5, 6, 7, 8, 529] + [0] * 71], np.int32))


def _err(name, got, want):
    err = float(np.abs(np.asarray(got, np.float32) - want).max())
    print(f"{name}: max abs err {err:.3e} (output scale {np.abs(want).max():.2f})")
    assert np.shape(got) == np.shape(want)
    return err


@pytest.mark.slow
def test_unet_matches_diffusers(loaded, torch_models):
    import torch

    i = _inputs()
    with torch.no_grad():
        want = torch_models["unet"](torch.from_numpy(i["x"]).permute(0, 4, 1, 2, 3), torch.from_numpy(i["t"]).long(),
                                    torch.from_numpy(i["ctx"])).sample.permute(0, 2, 3, 4, 1).numpy()
    got = jax.jit(loaded.unet_apply)(loaded.unet_params, i["x"], i["t"], i["ctx"])
    assert _err("unet", got, want) <= TOL


@pytest.mark.slow
def test_vae_matches_diffusers(loaded, torch_models):
    import torch

    i = _inputs()
    vae, sf = torch_models["vae"], loaded.vae_scaling_factor
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(i["frames"]).permute(0, 3, 1, 2)).latent_dist.mean
        images = vae.decode(mean).sample.permute(0, 2, 3, 1).numpy()
    z = loaded.vae_encode(loaded.vae_params, i["frames"])
    assert _err("vae encode (scaled mean)", z, mean.permute(0, 2, 3, 1).numpy() * sf) <= TOL
    assert _err("vae decode", loaded.vae_decode(loaded.vae_params, z), images) <= TOL
    # Videos (B, F, H, W, 3) go through frame by frame.
    video = loaded.vae_encode(loaded.vae_params, i["frames"][None])
    np.testing.assert_allclose(np.asarray(video[0]), np.asarray(z), atol=1e-6)


def test_text_encoder_matches_transformers(loaded, torch_models):
    import torch

    ids = _inputs()["ids"]
    with torch.no_grad():
        want = torch_models["text_encoder"](torch.from_numpy(ids).long()).last_hidden_state.numpy()
    got = jax.jit(loaded.text_encode)(loaded.text_encoder_params, ids)
    assert _err("text_encoder", got, want) <= TOL
    # The tokenizer came along, and tokenizes as the source's does.
    from ti2v_jax.tokenizer import tokenize

    assert tokenize(loaded.tokenizer, ["a cat"])[0, :4].tolist() == ids[0, :4].tolist()
    assert loaded.scheduler_config["_class_name"] == "DDIMScheduler"


@pytest.mark.slow
def test_round_trip_is_bit_exact(tiny_diffusers_dir, tiny_converted_dir, loaded):
    """convert -> save -> load gives exactly the in-memory converted parameters, and outputs."""
    mem = convert_in_memory(tiny_diffusers_dir)
    for name in ("unet", "vae", "text_encoder"):
        want, got = _flat(mem[name][1]), _flat(loaded.params[name])
        assert want.keys() == got.keys()
        for p in want:
            assert got[p].dtype == want[p].dtype == np.float32
            np.testing.assert_array_equal(got[p], want[p], err_msg=str(p))
    i = _inputs()
    for fn, name, x in ((loaded.text_encode, "text_encoder", i["ids"]), (loaded.vae_encode, "vae", i["frames"])):
        np.testing.assert_array_equal(np.asarray(fn(loaded.params[name], x)), np.asarray(fn(mem[name][1], x)))
    # The index records what was skipped and where it came from.
    index = layout.read_index(tiny_converted_dir)
    assert index["format"] == "ti2v-jax" and index["dtype"] == "float32"
    assert set(index["components"]) == {"unet", "vae", "text_encoder"}
    assert index["source_model_index"]["_class_name"] == "TextToVideoSDPipeline"
    assert loading.detect_format(tiny_converted_dir) == "converted" and layout.is_converted(tiny_converted_dir)
    assert loading.detect_format(tiny_diffusers_dir) == "diffusers" and not layout.is_converted(tiny_diffusers_dir)
    # load() also takes the diffusers directory itself (converted in memory).
    direct = loading.load(tiny_diffusers_dir, tokenizer=False, components=("text_encoder",))
    np.testing.assert_array_equal(np.asarray(direct.text_encode(direct.text_encoder_params, i["ids"])),
                                  np.asarray(loaded.text_encode(loaded.text_encoder_params, i["ids"])))


@pytest.mark.slow
def test_load_restores_without_torch(tiny_converted_dir):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from ti2v_jax import loading\n"
        f"c = loading.load({str(tiny_converted_dir)!r})\n"
        "ids = np.zeros((1, 77), np.int32)\n"
        "print(c.text_encode(c.text_encoder_params, ids).shape)\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(1, 77, 32)" in out.stdout


# ---- source formats and dtypes ------------------------------------------------------

def _resave(src: Path, dst: Path, fmt: str, torch_models) -> None:
    """Copy `src` with every network re-saved in format `fmt`."""
    import torch

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    for name, m in torch_models.items():
        d = dst / name
        if fmt == "fp16":
            m = type(m).from_pretrained(src / name).half()
            m.save_pretrained(d, variant="fp16" if name != "vae" else None)
        elif fmt == "bf16":
            type(m).from_pretrained(src / name).to(torch.bfloat16).save_pretrained(d)
        elif fmt == "sharded":
            m.save_pretrained(d, max_shard_size="300KB")
        elif fmt == "bin":
            if name == "text_encoder":  # transformers 5 writes safetensors only
                torch.save(m.state_dict(), d / "pytorch_model.bin")
            else:
                m.save_pretrained(d, safe_serialization=False, max_shard_size="300KB" if name == "unet" else "10GB")


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "sharded", "bin"])
def test_source_formats(fmt, tiny_diffusers_dir, loaded, torch_models, tmp_path):
    src = tmp_path / "src"
    _resave(tiny_diffusers_dir, src, fmt, torch_models)
    files = sorted(p.name for p in (src / "unet").iterdir())
    print(fmt, "unet files:", files)
    if fmt == "sharded":
        assert "diffusion_pytorch_model.safetensors.index.json" in files
    converted = convert_in_memory(src)
    for name in ("unet", "vae", "text_encoder"):
        want, got = _flat(loaded.params[name]), _flat(converted[name][1])
        assert want.keys() == got.keys()
        for p in want:
            w = want[p]
            if fmt in ("fp16", "bf16"):
                w = w.astype(np.float16 if fmt == "fp16" else ml_dtypes.bfloat16).astype(np.float32)
            np.testing.assert_array_equal(got[p], w, err_msg=f"{name} {p}")


@pytest.mark.slow
def test_bfloat16_cli_and_dtypes(tiny_diffusers_dir, loaded, tmp_path):
    spec = importlib.util.spec_from_file_location("diffusers_to_flax", REPO / "convert" / "diffusers_to_flax.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    dst = tmp_path / "bf16"
    assert cli.main([str(tiny_diffusers_dir), str(dst), "--dtype", "bfloat16"]) == 0
    assert layout.read_index(dst)["dtype"] == "bfloat16"
    c = loading.load(dst, tokenizer=False)
    assert {x.dtype for x in jax.tree.leaves(c.params)} == {jnp.dtype(jnp.bfloat16)}
    i = _inputs()
    for fn, name, x in ((c.text_encode, "text_encoder", i["ids"]), (c.vae_encode, "vae", i["frames"])):
        got = np.asarray(fn(c.params[name], x), np.float32)
        want = np.asarray(fn(loaded.params[name], x))
        err = np.abs(got - want).max()
        print(f"{name} bf16 vs fp32: max abs err {err:.3e}, scale {np.abs(want).max():.2f}")
        assert err <= 0.05 * np.abs(want).max()
    # Cast on load: bf16 checkpoint as fp32 params, fp32 checkpoint as bf16 params with fp32 compute.
    up = ckpt.load_component(dst, "vae", dtype=jnp.float32)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(up, nnx.Param))} == {jnp.dtype(jnp.float32)}
    down = ckpt.load_component(dst, "text_encoder", dtype=jnp.float32, param_dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(down, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}


# ---- export (numpy only) -----------------------------------------------------------

def test_export_diffusers_round_trip(loaded, torch_models, tmp_path):
    configs = {n: loaded.configs[n] for n in ("unet", "vae", "text_encoder")}
    src = export_diffusers(loaded.params, configs, tmp_path / "exported",
                           scheduler_config=loaded.scheduler_config)
    assert json.loads((src / "model_index.json").read_text())["unet"] == ["diffusers", "UNet3DConditionModel"]
    (src / "tokenizer").mkdir()
    (src / "tokenizer" / "vocab.json").write_text("{}")
    again = convert_in_memory(src)
    for name in configs:
        want, got = _flat(loaded.params[name]), _flat(again[name][1])
        for p in want:
            np.testing.assert_array_equal(got[p], want[p], err_msg=f"{name} {p}")
    # diffusers / transformers read it too, giving back the original tensors.
    for name, m in torch_models.items():
        want = m.state_dict()
        got = type(m).from_pretrained(src / name).state_dict()
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k].numpy(), want[k].numpy(), err_msg=f"{name} {k}")


def test_save_converted_from_flax_models(loaded, tiny_converted_dir, tmp_path):
    models = {n: loaded.params[n] for n in ("vae", "text_encoder")}
    dst = ckpt.save_converted(tmp_path / "saved", models, loaded.configs, dtype="float16",
                              tokenizer_dir=tiny_converted_dir / "tokenizer",
                              scheduler_config=loaded.scheduler_config)
    m = ckpt.load_component(dst, "text_encoder")
    got = _flat(nnx.state(m, nnx.Param))
    want = _flat(loaded.params["text_encoder"])
    assert {v.dtype for v in got.values()} == {np.dtype(np.float16)}
    for p in want:
        np.testing.assert_array_equal(got[p], want[p].astype(np.float16))
    with pytest.raises(FileNotFoundError, match="no component 'unet'"):
        ckpt.load_component(dst, "unet")


# ---- failures: strict, named, atomic ------------------------------------------------

@pytest.fixture()
def broken_src(tiny_diffusers_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_diffusers_dir, src)
    return src


def _edit_vae(src: Path, fn) -> None:
    from safetensors.numpy import save_file

    path = src / "vae" / "diffusion_pytorch_model.safetensors"
    state = torch_io.read_safetensors(path)
    fn(state)
    save_file(state, str(path))


@pytest.mark.parametrize("case,message", [
    ("missing", r"missing tensors \(1\):\n\s+decoder.conv_in.weight"),
    ("extra", r"unexpected tensors \(1\):\n\s+decoder.extra.weight"),
    ("shape", r"wrong shapes \(1\):\n\s+encoder.conv_out.bias: checkpoint \(7,\)"),
])
def test_bad_tensors_raise_and_leave_nothing(case, message, broken_src, tmp_path):
    edits = {"missing": lambda s: s.pop("decoder.conv_in.weight"),
             "extra": lambda s: s.__setitem__("decoder.extra.weight", np.zeros(3, np.float32)),
             "shape": lambda s: s.__setitem__("encoder.conv_out.bias", np.zeros(7, np.float32))}
    _edit_vae(broken_src, edits[case])
    dst = tmp_path / "out" / "ckpt"
    with pytest.raises(ConversionError, match=message) as e:
        convert_diffusers(broken_src, dst)  # unet converts first: the failure is half way
    print(e.value)
    assert "vae" in str(e.value)
    assert not dst.exists() and _leftovers(dst.parent, "ckpt") == []


@pytest.mark.parametrize("remove,message", [
    ("vae/config.json", "vae: config file .*vae/config.json not found"),
    ("text_encoder/model.safetensors", "no weights in .*text_encoder"),
    ("model_index.json", "no model_index.json"),
    ("scheduler/scheduler_config.json", "scheduler_config.json not found"),
    ("unet", "unet: component directory .*unet not found"),
])
def test_missing_files_raise_naming_them(remove, message, broken_src, tmp_path):
    p = broken_src / remove
    shutil.rmtree(p) if p.is_dir() else p.unlink()
    dst = tmp_path / "ckpt"
    with pytest.raises(FileNotFoundError, match=message):
        convert_diffusers(broken_src, dst)
    assert not dst.exists() and _leftovers(tmp_path, "ckpt") == []


def test_wrong_model_class_is_refused(broken_src, tmp_path):
    index = json.loads((broken_src / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (broken_src / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="UNet2DConditionModel"):
        convert_diffusers(broken_src, tmp_path / "ckpt")


def test_existing_destination_is_kept_unless_overwrite(tiny_diffusers_dir, tmp_path):
    dst = tmp_path / "ckpt"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_diffusers(tiny_diffusers_dir, dst)
    assert (dst / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="replace the source"):
        convert_diffusers(tiny_diffusers_dir, tiny_diffusers_dir, overwrite=True)
    convert_diffusers(tiny_diffusers_dir, dst, "float16", overwrite=True, components=("text_encoder",))
    assert not (dst / "keep.txt").exists() and layout.read_index(dst)["dtype"] == "float16"
    assert _leftovers(tmp_path, "ckpt") == []
    with pytest.raises(ValueError, match="is not a converted"):
        ckpt.load_component(tiny_diffusers_dir, "unet")


def test_convert_checkpoint_detects_the_layout(tiny_diffusers_dir, tiny_converted_dir, tmp_path):
    from ti2v_jax.weights.convert import convert_checkpoint

    report = convert_checkpoint(tiny_diffusers_dir, tmp_path / "ckpt", "float16")
    assert report.dtype == "float16" and set(report.components) == {"unet", "vae", "text_encoder"}
    with pytest.raises(ValueError, match="already a converted"):
        convert_checkpoint(tiny_converted_dir, tmp_path / "again")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        convert_checkpoint(tmp_path, tmp_path / "nothing")
    assert not (tmp_path / "again").exists() and not (tmp_path / "nothing").exists()


# ---- the real model's configurations --------------------------------------------------

REAL_CONFIGS = MS17B_CONFIGS


@pytest.mark.slow
def test_real_configs_map_strictly():
    """ModelScope 1.7B's configs: every PyTorch tensor (built on torch's meta device) maps, no memory used."""
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ti2v_jax.weights import mapping
    from ti2v_jax.weights.components import COMPONENTS

    cfg = {n: json.loads((REAL_CONFIGS / f"{n}.json").read_text()) for n in ("unet", "vae", "text_encoder")}
    with torch.device("meta"):
        models = {"unet": UNet3DConditionModel.from_config(cfg["unet"]), "vae": AutoencoderKL.from_config(cfg["vae"]),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))}
    counts = {}
    for name, m in models.items():
        spec = COMPONENTS[name]
        shapes = ckpt.param_shapes(spec.abstract(cfg[name]))
        # Zero-stride views: the shapes of the real tensors, none of their memory.
        state = {k: np.broadcast_to(np.zeros((), np.float16), tuple(v.shape)) for k, v in m.state_dict().items()}
        params, _ = mapping.fill_params(shapes, mapping.rename_keys(state, spec.renames), ignore=spec.ignore,
                                        component=name)
        counts[name] = sum(int(np.prod(v.shape)) for v in params.values())
    print({k: f"{v / 1e6:.1f}M" for k, v in counts.items()})
    assert counts["unet"] == sum(p.numel() for p in models["unet"].parameters())
    assert 1.40e9 < counts["unet"] < 1.42e9
