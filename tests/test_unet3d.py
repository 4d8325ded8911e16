"""Parity: our Flax UNet3DConditionModel against diffusers' on tiny random (perturbed) weights."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet3DConditionModel as TorchUNet3D
from diffusers.models.embeddings import get_timestep_embedding
from flax import nnx

from helpers import flax_from_torch, perturb_
from ti2v_jax import MS17B_CONFIGS
from ti2v_jax.models import attention, layers, unet3d

CA_DOWN, DOWN, CA_UP, UP = "CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"
CONFIGS = {
    # one resnet per down block; the head width 8 gives 4/8 heads and transformer_in 8x8 = 64 wide.
    "lpb1": dict(block_out_channels=[32, 64, 64], down_block_types=[CA_DOWN, CA_DOWN, DOWN],
                 up_block_types=[UP, CA_UP, CA_UP], layers_per_block=1, norm_num_groups=8,
                 attention_head_dim=8, cross_attention_dim=16, in_channels=4, out_channels=4, sample_size=16),
    "lpb2": dict(block_out_channels=[16, 32, 32], down_block_types=[CA_DOWN, CA_DOWN, DOWN],
                 up_block_types=[UP, CA_UP, CA_UP], layers_per_block=2, norm_num_groups=8,
                 attention_head_dim=8, cross_attention_dim=24, in_channels=4, out_channels=4, norm_eps=1e-6),
    # a first down block without attention: its text-free part is all of its first layer.
    "plain_first": dict(block_out_channels=[16, 32], down_block_types=[DOWN, CA_DOWN], up_block_types=[CA_UP, UP],
                        layers_per_block=1, norm_num_groups=8, attention_head_dim=8, cross_attention_dim=24,
                        in_channels=4, out_channels=4),
}
# (config, frames, (h, w), timesteps): 10x14 is not a multiple of 2**2 (diffusers forwards upsample sizes).
CASES = [
    ("lpb1", 1, (16, 24), 500),
    ("lpb1", 8, (16, 24), [10, 980]),
    ("lpb2", 3, (10, 14), [999, 1]),
    ("lpb2", 8, (16, 24), [250, 640]),
]
TOL = 1e-4
# Tiny models run in well under a second; LLVM optimisation only costs compile time (~2x).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
REAL_CONFIG = MS17B_CONFIGS / "unet.json"


class Ported:
    """A diffusers U-Net with perturbed weights, our port of it, and a jitted forward."""

    def __init__(self, name):
        self.config = CONFIGS[name]
        torch.manual_seed(0)
        self.torch = perturb_(TorchUNet3D(**self.config), scale=0.02, seed=1).eval()
        self.flax = flax_from_torch(lambda: unet3d.UNet3DConditionModel(self.config), self.torch,
                                    renames=unet3d.TORCH_RENAMES, ignore=unet3d.TORCH_IGNORE, component="unet")
        graphdef, state = nnx.split(self.flax)
        self.state = state
        self.apply = _jit(graphdef)


def _jit(graphdef):
    return jax.jit(lambda st, x, t, c: nnx.merge(graphdef, st)(x, t, c), compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def ported():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Ported(name)
        return cache[name]

    return get


def _inputs(config, frames, hw, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn((2, config["in_channels"], frames, *hw), generator=g)
    context = torch.randn((2, 5, config["cross_attention_dim"]), generator=g)
    return sample, context


@pytest.mark.slow
@pytest.mark.parametrize("name,frames,hw,timesteps", CASES, ids=[f"{c}-f{f}-{h}x{w}" for c, f, (h, w), _ in CASES])
def test_parity(ported, name, frames, hw, timesteps):
    p = ported(name)
    sample, context = _inputs(p.config, frames, hw)
    t_torch = torch.tensor(timesteps)
    with torch.no_grad():
        ref = p.torch(sample, t_torch, encoder_hidden_states=context).sample.numpy()
    out = p.apply(p.state, unet3d.from_torch_layout(jnp.asarray(sample.numpy())), jnp.asarray(timesteps),
                  jnp.asarray(context.numpy()))
    out = np.asarray(unet3d.to_torch_layout(out))
    err = float(np.abs(out - ref).max())
    print(f"{name} frames={frames} {hw}: max|ref|={np.abs(ref).max():.3f} max abs err={err:.2e}")
    assert out.shape == ref.shape
    assert err <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lpb2", "plain_first"])
def test_shared_samples_match_diffusers_on_tiled_batch(ported, name):
    """n contexts per sample: as diffusers on the samples tiled n times (context-major), with
    the text-free prefix (conv_in, transformer_in, the first down block up to its first
    cross-attention) run once per sample."""
    p = ported(name)
    sample, context = _inputs(p.config, 3, (10, 14))
    g = torch.Generator().manual_seed(5)
    contexts = torch.cat([context, torch.randn(context.shape, generator=g)])  # 4 contexts for 2 samples
    t = [999, 1]
    with torch.no_grad():
        ref = p.torch(torch.cat([sample, sample]), torch.tensor(t + t), encoder_hidden_states=contexts).sample.numpy()
    out = p.apply(p.state, unet3d.from_torch_layout(jnp.asarray(sample.numpy())), jnp.asarray(t),
                  jnp.asarray(contexts.numpy()))
    out = np.asarray(unet3d.to_torch_layout(out))
    err = float(np.abs(out - ref).max())
    print(f"{name}: 2 samples x 2 contexts each: max abs err {err:.2e}")
    assert out.shape == ref.shape and err <= TOL
    with pytest.raises(ValueError, match="3 contexts for 2 samples"):
        p.apply(p.state, unet3d.from_torch_layout(jnp.asarray(sample.numpy())), jnp.asarray(t),
                jnp.asarray(contexts.numpy()[:3]))


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU formulation's blocks")
def test_parity_in_small_cpu_blocks(ported, monkeypatch):
    """Attention and the transformers' per-sequence layers forced through many small blocks
    (`layers.map_in_blocks`): still diffusers' output."""
    monkeypatch.setattr(attention, "_CPU_BLOCK_BYTES", 16 << 10)
    p = ported("lpb1")
    assert p.flax.attention == "blocked"  # attention=None, resolved when built: blocked on CPU
    sample, context = _inputs(p.config, 8, (16, 24))
    with torch.no_grad():
        ref = p.torch(sample, torch.tensor([10, 980]), encoder_hidden_states=context).sample.numpy()
    graphdef = nnx.graphdef(p.flax)
    args = (p.state, unet3d.from_torch_layout(jnp.asarray(sample.numpy())), jnp.array([10, 980]),
            jnp.asarray(context.numpy()))
    jaxpr = jax.make_jaxpr(lambda st, x, t, c: nnx.merge(graphdef, st)(x, t, c))(*args)
    scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    out = np.asarray(unet3d.to_torch_layout(_jit(graphdef)(*args)))  # traced afresh, at this budget
    err = float(np.abs(out - ref).max())
    print(f"lpb1 in 16 KiB blocks ({len(scans)} blocked loops): max abs err {err:.2e}")
    assert len(scans) >= 10 and err <= TOL


def _rebuilt(p, **kw):
    """p's U-Net with the same weights, built with other constructor arguments (e.g. attention)."""
    model = nnx.eval_shape(lambda: unet3d.UNet3DConditionModel(p.config, **kw))
    nnx.update(model, nnx.state(p.flax, nnx.Param))
    return model


@pytest.mark.slow
def test_parity_with_xla_attention(ported):
    """attention="xla" (no blocked layers on any platform): still diffusers' output, and a
    graph definition of its own (so no compiled program is shared with the automatic choice)."""
    p = ported("lpb1")
    model = _rebuilt(p, attention="xla")
    assert model.attention == "xla" and nnx.graphdef(model) != nnx.graphdef(p.flax)
    sample, context = _inputs(p.config, 4, (16, 24))
    with torch.no_grad():
        ref = p.torch(sample, torch.tensor([10, 980]), encoder_hidden_states=context).sample.numpy()
    graphdef, state = nnx.split(model)
    args = (state, unet3d.from_torch_layout(jnp.asarray(sample.numpy())), jnp.array([10, 980]),
            jnp.asarray(context.numpy()))
    jaxpr = jax.make_jaxpr(lambda st, x, t, c: nnx.merge(graphdef, st)(x, t, c))(*args)
    assert not [e for e in jaxpr.eqns if e.primitive.name == "scan"]  # no blocks
    out = np.asarray(unet3d.to_torch_layout(_jit(graphdef)(*args)))
    err = float(np.abs(out - ref).max())
    print(f"lpb1, attention xla: max abs err {err:.2e}")
    assert err <= TOL


@pytest.mark.slow
def test_parity_with_one_pass_group_norm(ported):
    """The opt-in one-pass GroupNorm (sum and sum of squares in one reduction) in float32: still
    diffusers' output, and its own graph definition."""
    p = ported("lpb1")
    model = _rebuilt(p, group_norm="one_pass")
    assert nnx.graphdef(model) != nnx.graphdef(p.flax)
    sample, context = _inputs(p.config, 4, (16, 24), seed=2)
    with torch.no_grad():
        ref = p.torch(sample, torch.tensor([10, 980]), encoder_hidden_states=context).sample.numpy()
    graphdef, state = nnx.split(model)
    out = _jit(graphdef)(state, unet3d.from_torch_layout(jnp.asarray(sample.numpy())), jnp.array([10, 980]),
                         jnp.asarray(context.numpy()))
    err = float(np.abs(np.asarray(unet3d.to_torch_layout(out)) - ref).max())
    print(f"lpb1, one-pass GroupNorm: max abs err {err:.2e}")
    assert err <= TOL


@pytest.mark.slow
def test_bfloat16_runs_close(ported):
    """The same weights in bfloat16 (params and compute) stay near the float32 reference."""
    p = ported("lpb1")
    bf = jnp.bfloat16
    model = nnx.eval_shape(lambda: unet3d.UNet3DConditionModel(p.config, dtype=bf, param_dtype=bf))
    nnx.update(model, jax.tree.map(lambda a: a.astype(bf), nnx.state(p.flax, nnx.Param)))
    sample, context = _inputs(p.config, 4, (8, 8), seed=3)
    with torch.no_grad():
        ref = p.torch(sample, torch.tensor([10, 900]), encoder_hidden_states=context).sample.numpy()
    graphdef, state = nnx.split(model)
    out = _jit(graphdef)(state, unet3d.from_torch_layout(jnp.asarray(sample.numpy(), bf)), jnp.array([10, 900]),
                         jnp.asarray(context.numpy(), bf))
    assert out.dtype == bf
    out = np.asarray(unet3d.to_torch_layout(out).astype(jnp.float32))
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    print(f"bfloat16: max abs err {np.abs(out - ref).max():.3e}, relative to max|ref| {rel:.3e}")
    assert np.isfinite(out).all() and rel < 5e-2


def test_timestep_embedding_matches_diffusers():
    t = np.array([0, 1, 17, 500, 999])
    ref = get_timestep_embedding(torch.from_numpy(t), 32, flip_sin_to_cos=True, downscale_freq_shift=0).numpy()
    ours = np.asarray(unet3d.timestep_embedding(jnp.asarray(t), 32))
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("key,value", [("num_attention_heads", 8), ("act_fn", "gelu"), ("attention_head_dim", [8, 8, 8]),
                                       ("down_block_types", [CA_DOWN, "DownBlockMotion", DOWN]),
                                       ("mid_block_scale_factor", 2.0), ("time_cond_proj_dim", 4),
                                       ("not_a_key", 1)])
def test_unsupported_config_raises(key, value):
    with pytest.raises(ValueError, match=key):
        unet3d.UNet3DConditionModel({**CONFIGS["lpb1"], key: value})


def test_layout_round_trip():
    x = jnp.arange(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6)
    assert unet3d.from_torch_layout(x).shape == (2, 4, 5, 6, 3)
    assert (unet3d.to_torch_layout(unet3d.from_torch_layout(x)) == x).all()


@pytest.mark.slow
def test_real_config_parameter_count():
    config = json.loads(REAL_CONFIG.read_text())
    model = nnx.eval_shape(lambda: unet3d.UNet3DConditionModel(config, param_dtype=jnp.bfloat16))
    count = sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert count == 1_411_233_860
