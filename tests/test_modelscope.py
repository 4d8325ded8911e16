"""Original ModelScope layout -> converted directory, checked against the ORIGINAL PyTorch classes.

The references are ModelScope's own `UNetSD` and LDM `AutoencoderKL` (the files of the
`modelscope` package, installed with `--no-deps` and loaded by path, as the README's third
install line does; the tests skip without it) and a PyTorch twin of OpenCLIP's text
tower with open_clip's parameter names (open_clip itself cannot be imported here).
Tiny random instances, every parameter perturbed, saved in the release's file layout,
converted by `convert_modelscope`, loaded by `ti2v_jax.loading`, compared in fp32.
"""

import collections
import importlib.util
import json
import logging
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from ti2v_jax import MS17B_CONFIGS, loading
from ti2v_jax.errors import CheckpointError
from ti2v_jax.tokenizer import load_tokenizer, tokenize
from ti2v_jax.weights import mapping
from ti2v_jax.weights import modelscope as ms
from ti2v_jax.weights.convert import (
    convert_in_memory,
    convert_modelscope,
    detect_format,
)

TOL = 1e-4


def _original(name):
    """modelscope/models/multi_modal/video_synthesis/<name>.py loaded by path: importing the
    `modelscope` package would pull its heavy dependencies, these two files need only torch and einops."""
    spec = importlib.util.find_spec("modelscope")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("modelscope is not installed (the README's reference line: pip install --no-deps ... "
                    "modelscope==1.40.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "multi_modal" / "video_synthesis" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"_modelscope_{name}_by_path", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# Tiny but complete: cross-attention and plain levels, a downsample/upsample, channel
# changes (1x1 shortcuts), 2 attention heads everywhere. UNetSD hard-codes 32 norm groups
# and a 1024-wide decoder context, so channels are multiples of 32 and context_dim is 1024.
MODEL_CFG = dict(unet_in_dim=4, unet_dim=32, unet_y_dim=16, unet_context_dim=1024, unet_out_dim=4,
                 unet_dim_mult=[1, 2, 2], unet_num_heads=8, unet_head_dim=16, unet_res_blocks=1,
                 unet_attn_scales=[1, 0.5], unet_dropout=0.1, temporal_attention="True",
                 num_timesteps=1000, mean_type="eps", var_type="fixed_small", loss_type="mse")
DDCONFIG = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0)
CLIP = dict(vocab=49408, width=128, heads=2, layers=3, context=77)


# ---- an OpenCLIP text tower twin (open_clip's names and computation) ----------------

class _ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(collections.OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(), c_proj=nn.Linear(4 * width, width)))

    def forward(self, x, attn_mask):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([_ResidualAttentionBlock(width, heads) for _ in range(layers)])


class OpenCLIPTwin(nn.Module):
    """open_clip.CLIP's parameter names; `encode_penultimate` is ModelScope's FrozenOpenCLIPEmbedder."""

    def __init__(self, vocab, width, heads, layers, context, embed_dim=32):
        super().__init__()
        self.visual = nn.Module()  # a stand-in for the vision tower, which the converter must skip
        self.visual.conv1 = nn.Conv2d(3, 8, 4, bias=False)
        self.visual.proj = nn.Parameter(torch.randn(8, embed_dim))
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        self.transformer = _Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        mask = torch.empty(context, context).fill_(float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def encode_penultimate(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = x.permute(1, 0, 2)  # NLD -> LND
        for r in self.transformer.resblocks[:-1]:
            x = r(x, attn_mask=self.attn_mask)
        return self.ln_final(x.permute(1, 0, 2))


# ---- the tiny release --------------------------------------------------------------

def _perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def _configuration(model_cfg):
    return {"framework": "pytorch", "task": "text-to-video-synthesis",
            "model": {"type": "latent-text-to-video-synthesis",
                      "model_args": {"ckpt_clip": "open_clip_pytorch_model.bin",
                                     "ckpt_unet": "text2video_pytorch_model.pth",
                                     "ckpt_autoencoder": "VQGAN_autoencoder.pth", "max_frames": 16, "tiny_gpu": 1},
                      "model_cfg": model_cfg},
            "pipeline": {"type": "latent-text-to-video-synthesis"}}


def write_release(d: Path, unet, ae, clip, model_cfg=MODEL_CFG):
    d.mkdir(parents=True, exist_ok=True)
    (d / "configuration.json").write_text(json.dumps(_configuration(model_cfg), indent=2))
    torch.save(unet.state_dict(), d / "text2video_pytorch_model.pth")
    # VQGAN_autoencoder.pth is a whole Stable Diffusion checkpoint; only first_stage_model.* is used.
    sd = {f"first_stage_model.{k}": v for k, v in ae.state_dict().items()}
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(8, 4, 3, 3)
    sd["cond_stage_model.model.ln_final.weight"] = torch.randn(8)
    sd["betas"] = torch.linspace(1e-4, 2e-2, 10)
    torch.save({"state_dict": sd, "global_step": 1}, d / "VQGAN_autoencoder.pth")
    torch.save(clip.state_dict(), d / "open_clip_pytorch_model.bin")
    return d


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    torch.manual_seed(0)
    unet = _perturb(_original("unet_sd").UNetSD(
        in_dim=4, dim=32, y_dim=16, context_dim=1024, out_dim=4, dim_mult=[1, 2, 2], num_heads=8, head_dim=16,
        num_res_blocks=1, attn_scales=[1, 0.5], dropout=0.1, temporal_attention=True), 1)
    ae = _perturb(_original("autoencoder").AutoencoderKL(DDCONFIG, 4), 2)
    clip = _perturb(OpenCLIPTwin(**CLIP), 3)
    d = write_release(tmp_path_factory.mktemp("ms") / "release", unet, ae, clip)
    return d, unet, ae, clip


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    src = release[0]
    dst = tmp_path_factory.mktemp("ms") / "converted"
    report = convert_modelscope(src, dst, dtype="float32")
    print(report.summary())
    return dst, report, loading.load(dst)


# ---- parity ------------------------------------------------------------------------

@pytest.mark.slow
def test_unet_parity(release, converted):
    _, unet, _, _ = release
    c = converted[2]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3, 8, 8)).astype(np.float32)  # (B, C, F, h, w) as UNetSD takes it
    t = np.array([999, 37])
    ctx = rng.standard_normal((2, 5, 1024)).astype(np.float32)
    with torch.no_grad():
        ref = unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).numpy()
    out = c.unet_apply(c.unet_params, jnp.asarray(x.transpose(0, 2, 3, 4, 1)), jnp.asarray(t), jnp.asarray(ctx))
    out = np.asarray(out).transpose(0, 4, 1, 2, 3)
    err = np.abs(out - ref).max()
    print(f"UNetSD vs Flax UNet3DConditionModel: max abs error {err:.3g} (output scale {np.abs(ref).max():.3g})")
    assert err <= TOL


@pytest.mark.slow
def test_vae_parity(release, converted):
    _, _, ae, _ = release
    c = converted[2]
    vae = nnx.merge(*c.vae)
    rng = np.random.default_rng(1)
    img = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    z = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        post = ae.encode(torch.from_numpy(img))
        ref_mean, ref_logvar = post.mean.numpy(), post.logvar.numpy()
        ref_dec = ae.decode(torch.from_numpy(z)).numpy()
    mean, logvar = vae.encode(jnp.asarray(img.transpose(0, 2, 3, 1)))
    dec = np.asarray(vae.decode(jnp.asarray(z.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    errs = {"encode mean": np.abs(np.asarray(mean).transpose(0, 3, 1, 2) - ref_mean).max(),
            "encode logvar": np.abs(np.clip(np.asarray(logvar), -30, 20).transpose(0, 3, 1, 2) - ref_logvar).max(),
            "decode": np.abs(dec - ref_dec).max()}
    print("LDM AutoencoderKL vs Flax AutoencoderKL: max abs error",
          ", ".join(f"{k} {v:.3g}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL
    # The loaded pure functions scale by the release's 0.18215.
    scaled = c.vae_encode(c.vae_params, jnp.asarray(img.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(scaled), np.asarray(mean) * 0.18215, rtol=1e-6, atol=1e-6)


def test_text_encoder_parity(release, converted):
    _, _, _, clip = release
    c = converted[2]
    ids = np.asarray(tokenize(c.tokenizer, ["a photo of a cat!", ""]))
    with torch.no_grad():
        ref = clip.encode_penultimate(torch.from_numpy(ids.astype(np.int64))).numpy()
    out = np.asarray(c.text_encode(c.text_encoder_params, jnp.asarray(ids)))
    err = np.abs(out - ref).max()
    print(f"OpenCLIP penultimate + ln_final vs Flax CLIPTextModel: max abs error {err:.3g}")
    assert out.shape == (2, 77, CLIP["width"])
    assert err <= TOL


# ---- the converted directory -------------------------------------------------------

def test_layout_and_report(release, converted):
    dst, report, c = converted
    index = json.loads((dst / "model_index.json").read_text())
    assert index["format"] == "ti2v-jax" and index["source_format"] == "modelscope"
    assert set(index["components"]) == {"unet", "vae", "text_encoder"}
    for name in ("unet", "vae", "text_encoder"):
        assert (dst / name / "config.json").is_file() and (dst / name / "params").is_dir()
    assert c.scheduler_config["beta_schedule"] == "scaled_linear" and c.scheduler_config["steps_offset"] == 1
    assert c.configs["text_encoder"]["num_hidden_layers"] == CLIP["layers"] - 1
    assert c.configs["vae"]["block_out_channels"] == [32, 64] and c.configs["vae"]["scaling_factor"] == 0.18215
    skipped = {n: set(v["skipped"]) for n, v in report.components.items()}
    last = CLIP["layers"] - 1
    assert {"visual.conv1.weight", "visual.proj", "text_projection", "logit_scale",
            f"transformer.resblocks.{last}.attn.in_proj_weight", f"transformer.resblocks.{last}.ln_2.bias"} \
        <= skipped["text_encoder"]
    assert not any(k.startswith(f"transformer.resblocks.{last - 1}.") for k in skipped["text_encoder"])
    assert skipped["vae"] == {"model.diffusion_model.input_blocks.0.0.weight",
                              "cond_stage_model.model.ln_final.weight", "betas"}
    assert skipped["unet"] == set()


def test_tokenizer_is_open_clips(tmp_path):
    """The full 49408-token CLIP BPE vocabulary, padded with 0 ('!') to 77, as open_clip.tokenize gives."""
    tok = load_tokenizer(ms.write_clip_tokenizer(tmp_path))
    assert len(tok) == 49408
    ids = tokenize(tok, ["a photo of a cat!", "Hello!!"])
    # open_clip: "a photo of a cat!" -> 49406 320 1125 539 320 2368 256 49407 0 ... ("!" is "!</w>", 256)
    assert ids.shape == (2, 77)
    assert ids[0, :9].tolist() == [49406, 320, 1125, 539, 320, 2368, 256, 49407, 0]
    assert ids[1, :5].tolist() == [49406, 3306, 748, 49407, 0] and not ids[1, 5:].any()


def test_strict_conversion(release, tmp_path):
    """A tensor too many or too few is an error naming it, and nothing is written."""
    src = release[0]
    state = torch.load(src / "text2video_pytorch_model.pth", weights_only=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("configuration.json", "VQGAN_autoencoder.pth", "open_clip_pytorch_model.bin"):
        (bad / f).symlink_to(src / f)
    state["input_blocks.1.0.surprise.weight"] = torch.zeros(3)
    del state["middle_block.1.proj_in.weight"]
    torch.save(state, bad / "text2video_pytorch_model.pth")
    with pytest.raises(mapping.ConversionError) as e:
        convert_modelscope(bad, tmp_path / "out")
    print(e.value)
    # Named as renamed and as the original file has it.
    assert "down_blocks.0.resnets.0.surprise.weight   [text2video_pytorch_model.pth: " \
        "input_blocks.1.0.surprise.weight]" in str(e.value)
    assert "mid_block.attentions.0.proj_in.weight" in str(e.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad"]


def test_unsupported_model_cfg():
    with pytest.raises(ValueError, match="unet_num_heads"):
        ms.unet_config(dict(MODEL_CFG, unet_num_heads=4))
    with pytest.raises(ValueError, match="temporal_attention"):
        ms.unet_config(dict(MODEL_CFG, temporal_attention="False"))
    with pytest.raises(ValueError, match="unet_context_dim"):
        ms.unet_config(dict(MODEL_CFG, unet_context_dim=768))


def test_in_memory_matches_converted(release, converted):
    """The one in-memory conversion (`convert_in_memory`, and `loading.load` of the release
    directory itself) gives the saved parameters, tokenizer and schedule."""
    config, state = convert_in_memory(release[0], components=("text_encoder",))["text_encoder"]
    assert config == converted[2].configs["text_encoder"]
    a = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}
    b = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(converted[2].text_encoder_params)}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    direct = loading.load(release[0])
    for name in ("unet", "vae", "text_encoder"):
        a = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(direct.params[name])}
        b = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(converted[2].params[name])}
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    assert direct.scheduler_config == converted[2].scheduler_config
    assert tokenize(direct.tokenizer, ["a cat"]).tolist() == tokenize(converted[2].tokenizer, ["a cat"]).tolist()


def test_one_pass_over_the_release(release, monkeypatch):
    """Loading the release reads configuration.json once (it was parsed 6 times) and builds one
    abstract model per network (the conversion and the load built one each before)."""
    from helpers import count_folder_reads

    counts = count_folder_reads(monkeypatch, release[0])
    loading.load(release[0])
    assert counts == {"folder": 1, "parse configuration.json": 1, "build unet": 1, "build vae": 1,
                      "build text_encoder": 1}, counts


def test_detect_and_dispatch(release, tmp_path):
    from ti2v_jax.weights.convert import convert_checkpoint

    src = release[0]
    convert_checkpoint(src, tmp_path / "auto")  # source_format="auto"
    assert json.loads((tmp_path / "auto" / "model_index.json").read_text())["source_format"] == "modelscope"
    assert detect_format(src) == "modelscope"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "y")
    with pytest.raises(ValueError, match="is a modelscope checkpoint, not diffusers"):
        convert_checkpoint(src, tmp_path / "z", source_format="diffusers")
    with pytest.raises(ValueError, match="source_format"):
        convert_checkpoint(src, tmp_path / "x", source_format="onnx")


# ---- full-size name/shape maps, without weights (meta tensors) ---------------------

REAL_MODEL_CFG = dict(unet_in_dim=4, unet_dim=320, unet_y_dim=768, unet_context_dim=1024, unet_out_dim=4,
                      unet_dim_mult=[1, 2, 4, 4], unet_num_heads=8, unet_head_dim=64, unet_res_blocks=2,
                      unet_attn_scales=[1, 0.5, 0.25], unet_dropout=0.1, temporal_attention="True",
                      num_timesteps=1000, mean_type="eps", var_type="fixed_small", loss_type="mse")
SHARED = MS17B_CONFIGS


def _shapes(module):
    """A meta module's state dict as zero-stride numpy arrays of the right shapes (no memory)."""
    return {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in module.state_dict().items()}


def _check_against_torch(model, state, prefix=""):
    """Same names as the diffusers/transformers PyTorch model, same shapes up to k=1 conv axes."""
    ref = {k if k.startswith(prefix) else prefix + k: tuple(v.shape) for k, v in model.state_dict().items()
           if not k.endswith("position_ids")}
    assert sorted(set(ref) - set(state)) == [] and sorted(set(state) - set(ref)) == []
    squeeze = lambda s: s[:2] if len(s) > 2 and all(d == 1 for d in s[2:]) else s
    bad = {k: (tuple(state[k].shape), s) for k, s in ref.items() if squeeze(tuple(state[k].shape)) != squeeze(s)}
    assert not bad


def test_release_sized_maps():
    """The ModelScope 1.7B release's names and shapes map onto diffusers'/transformers' models
    (whose names our Flax models carry), and the derived configs equal the diffusers release's."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    plain = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = _original("unet_sd").UNetSD(
            in_dim=4, dim=320, y_dim=768, context_dim=1024, out_dim=4, dim_mult=[1, 2, 4, 4], num_heads=8,
            head_dim=64, num_res_blocks=2, attn_scales=[1, 0.5, 0.25], dropout=0.1, temporal_attention=True)
        ae = _original("autoencoder").AutoencoderKL(
            dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                 num_res_blocks=2, attn_resolutions=[], dropout=0.0), 4)
        clip = OpenCLIPTwin(vocab=49408, width=1024, heads=16, layers=24, context=77)
        config = ms.unet_config(REAL_MODEL_CFG)
        state, _ = ms.unet_state(_shapes(unet), config)
        _check_against_torch(UNet3DConditionModel(**plain(config)), state)
        vstate, _, vconfig = ms.vae_state(_shapes(ae))
        _check_against_torch(AutoencoderKL(**plain(vconfig)), vstate)
        tstate, _, tconfig = ms.text_state(_shapes(clip))
        _check_against_torch(CLIPTextModel(CLIPTextConfig(**tconfig)), tstate, prefix="text_model.")
    if SHARED.is_dir():
        for name, cfg in (("unet", config), ("vae", vconfig), ("text_encoder", tconfig)):
            ref = json.loads((SHARED / f"{name}.json").read_text())
            diff = {k: (cfg.get(k), v) for k, v in ref.items() if not k.startswith("_") and k not in
                    ("torch_dtype", "transformers_version", "sample_size") and cfg.get(k) != v}
            assert not diff, f"{name}: {diff}"


# ---- end to end: the original-layout directory through `info` and the pipeline ----------

@pytest.fixture(scope="module")
def runnable_release(tmp_path_factory):
    """A tiny release whose parts fit together: UNetSD's cross-attention is 1024 wide
    whatever the config says, so the text tower is 1024 wide too (one block used)."""
    torch.manual_seed(1)
    unet = _perturb(_original("unet_sd").UNetSD(
        in_dim=4, dim=32, y_dim=16, context_dim=1024, out_dim=4, dim_mult=[1, 2, 2], num_heads=8, head_dim=16,
        num_res_blocks=1, attn_scales=[1, 0.5], dropout=0.1, temporal_attention=True), 4)
    ae = _perturb(_original("autoencoder").AutoencoderKL(DDCONFIG, 4), 5)
    clip = _perturb(OpenCLIPTwin(vocab=49408, width=1024, heads=16, layers=2, context=77), 6)
    return write_release(tmp_path_factory.mktemp("ms") / "runnable", unet, ae, clip)


@pytest.mark.slow
def test_info_and_pipeline_end_to_end(runnable_release, tmp_path, capsys, caplog):
    """`ti2v-jax info` on the release reports the configs derived from configuration.json,
    `ti2v-jax convert` auto-detects the layout, and the pipeline generates the same video
    from the release (converted on the fly) as from its converted directory."""
    from ti2v_jax import cli
    from ti2v_jax.pipeline import TI2VZeroPipeline

    src, dst = runnable_release, tmp_path / "converted"
    assert cli.main(["info", str(src), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "ModelScope" in info["format"]
    unet = info["components"]["unet"]["config"]
    assert unet["block_out_channels"] == [MODEL_CFG["unet_dim"] * m for m in MODEL_CFG["unet_dim_mult"]]
    assert unet["layers_per_block"] == MODEL_CFG["unet_res_blocks"]
    assert unet["cross_attention_dim"] == MODEL_CFG["unet_context_dim"]
    assert info["components"]["text_encoder"]["config"]["num_hidden_layers"] == 1
    assert cli.main(["convert", str(src), str(dst)]) == 0
    assert "unused by ModelScope" in capsys.readouterr().out
    assert cli.main(["info", str(dst), "--json"]) == 0
    info_converted = json.loads(capsys.readouterr().out)
    for name in ("unet", "vae", "text_encoder"):
        assert info["components"][name]["num_params"] == info_converted["components"][name]["num_params"] > 0

    img = (np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8)
    kw = dict(num_new_frames=2, num_inference_steps=2, resample_iters=1, height=16, width=16)
    with caplog.at_level(logging.INFO, logger="ti2v_jax.loading"):
        from_release = TI2VZeroPipeline.from_pretrained(src, num_frames=4)(img, "a cat", **kw).frames
    assert any("modelscope checkpoint: converting it in memory" in r.getMessage() for r in caplog.records)
    from_converted = TI2VZeroPipeline.from_pretrained(dst, num_frames=4)(img, "a cat", **kw).frames
    assert from_release.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(from_release, from_converted)
