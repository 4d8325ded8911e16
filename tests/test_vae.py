"""Parity: our Flax AutoencoderKL against diffusers' on tiny random weights."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from helpers import flax_from_state, perturb_, torch_state_numpy

from ti2v_jax import MS17B_CONFIGS
from ti2v_jax.models import vae
from ti2v_jax.weights import mapping


def _port(model_cls, config, torch_state, module):
    """Our model filled from a PyTorch state dict through `mapping.fill_params` (tests/helpers.py)."""
    model, skipped = flax_from_state(lambda: model_cls(config, rngs=nnx.Rngs(0)), torch_state,
                                     renames=module.TORCH_RENAMES, ignore=module.TORCH_IGNORE)
    return model


def _legacy_names(state):
    """diffusers < 0.16 names of the mid-block attention (what the ModelScope VAE file has)."""
    out = {}
    for k, v in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = re.sub(rf"(mid_block\.attentions\.\d+)\.{re.escape(new)}\.", rf"\1.{old}.", k)
        out[k] = v
    return out


CONFIGS = [
    dict(block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8, latent_channels=4,
         mid_block_add_attention=True),
    dict(block_out_channels=[32, 32, 64], layers_per_block=2, norm_num_groups=8, latent_channels=4),
]


@pytest.mark.slow
@pytest.mark.parametrize("cfg_i,hw", [(0, (32, 48)), (1, (24, 40))])
def test_vae_matches_diffusers(cfg_i, hw):
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    n = len(CONFIGS[cfg_i]["block_out_channels"])
    config = dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3, act_fn="silu", sample_size=64,
                  scaling_factor=0.18215, down_block_types=["DownEncoderBlock2D"] * n,
                  up_block_types=["UpDecoderBlock2D"] * n, **CONFIGS[cfg_i])
    torch.manual_seed(cfg_i)
    ref = TorchAutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    state = torch_state_numpy(perturb_(ref, 0.1, seed=10 + cfg_i))
    assert any(".to_out.0." in k for k in state)
    model = _port(vae.AutoencoderKL, config, state, vae)
    assert model.scaling_factor == pytest.approx(0.18215)

    rng = np.random.default_rng(cfg_i)
    images = rng.uniform(-1, 1, (2, 3, *hw)).astype(np.float32)
    with torch.no_grad():
        post = ref.encode(torch.from_numpy(images)).latent_dist
        want_mean, want_logvar = post.mean.numpy(), post.logvar.numpy()
        latents = rng.standard_normal(want_mean.shape).astype(np.float32)
        want_dec = ref.decode(torch.from_numpy(latents)).sample.numpy()

    nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))  # noqa: E731
    mean, logvar = model.encode(jnp.asarray(nhwc(images)))
    dec = model.decode(jnp.asarray(nhwc(latents)))
    f = 2 ** (n - 1)
    assert mean.shape == (2, hw[0] // f, hw[1] // f, 4) and dec.shape == (2, *hw, 3)
    errs = {"mean": np.abs(np.asarray(mean) - nhwc(want_mean)).max(),
            "logvar": np.abs(np.asarray(logvar) - nhwc(want_logvar)).max(),
            "decode": np.abs(np.asarray(dec) - nhwc(want_dec)).max()}
    scales = {"mean": np.abs(want_mean).max(), "logvar": np.abs(want_logvar).max(), "decode": np.abs(want_dec).max()}
    print(f"VAE config {cfg_i} {hw}: max abs err " + ", ".join(f"{k} {v:.3e} (|ref| max {scales[k]:.2f})"
                                                               for k, v in errs.items()))
    for k, e in errs.items():
        assert e <= 1e-4 * max(1.0, scales[k]), k

    # The same weights under diffusers 0.15's attention names load to the same model.
    legacy = _legacy_names(state)
    assert any(".proj_attn." in k for k in legacy) and not any(".to_q." in k for k in legacy)
    model_legacy = _port(vae.AutoencoderKL, config, legacy, vae)
    same = jax_equal(nnx.state(model, nnx.Param), nnx.state(model_legacy, nnx.Param))
    assert same


def jax_equal(a, b):
    fa, fb = dict(nnx.to_flat_state(a)), dict(nnx.to_flat_state(b))
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k].get_value(), fb[k].get_value()) for k in fa)


@pytest.mark.slow
def test_vae_without_mid_attention_and_config_errors():
    cfg = dict(block_out_channels=[8], norm_num_groups=4, mid_block_add_attention=False)
    model = vae.AutoencoderKL(cfg)
    mean, logvar = model.encode(jnp.zeros((1, 8, 8, 3)))
    assert mean.shape == logvar.shape == (1, 8, 8, 4)
    assert not any("attentions" in str(p) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    with pytest.raises(ValueError, match="down_block_types"):
        vae.AutoencoderKL(dict(cfg, down_block_types=["AttnDownEncoderBlock2D"]))
    with pytest.raises(ValueError, match="act_fn"):
        vae.AutoencoderKL(dict(cfg, act_fn="gelu"))
    with pytest.raises(ValueError, match="norm_type"):
        vae.AutoencoderKL(dict(cfg, norm_type="spatial"))


def test_real_modelscope_config_maps_key_for_key():
    """The real text-to-video-ms-1.7b VAE config, under diffusers 0.15's names: every tensor has a home."""
    import json

    from diffusers import AutoencoderKL as TorchAutoencoderKL

    path = MS17B_CONFIGS / "vae.json"
    config = json.loads(path.read_text())
    with torch.device("meta"):
        ref = TorchAutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")})
    state = _legacy_names({k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in ref.state_dict().items()})
    abstract = nnx.eval_shape(lambda: vae.AutoencoderKL(config))
    shapes = {p: v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    params, _ = mapping.fill_params(shapes, mapping.rename_keys(state, vae.TORCH_RENAMES), ignore=vae.TORCH_IGNORE)
    assert len(params) == len(state) == len(shapes)
    assert abstract.scaling_factor == pytest.approx(0.18215)
