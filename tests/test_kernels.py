"""Kernel choices: float32 statistics under half precision, the TPU attention kernel (in Pallas'
interpret mode, on CPU) against XLA's, and the per-platform tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ti2v_jax import platforms
from ti2v_jax.models import layers, unet3d

_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "argmax", "cumsum", "cumlogsumexp", "cummax", "reduce_prod"}


def _eqns(jaxpr):
    """Every equation of a jaxpr, those of its sub-jaxprs (jit, scan, custom_jvp, ...) included."""
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for sub in (v if isinstance(v, (list, tuple)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def _reduction_dtypes(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    return {(e.primitive.name, str(e.invars[0].aval.dtype)) for e in _eqns(jaxpr) if e.primitive.name in _REDUCTIONS}


# --- norm statistics and softmax in float32 (issue 23) ----------------------------------

def _naive_bf16_group_norm(x, groups, eps):
    """GroupNorm with its statistics in bfloat16: what the layers must NOT do."""
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(xg - mean).mean(axis=(1, 3), keepdims=True)
    return ((xg - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)


def test_group_norm_statistics_in_float32_under_bfloat16():
    """bf16 activations with a large common offset (the mean's bf16 rounding alone is ~1): the
    output equals the float32 computation on the same bf16 inputs up to the output's bf16
    rounding; statistics taken in bf16 miss it by far (checked here, so the test can fail)."""
    x = (300.0 + jax.random.normal(jax.random.key(0), (2, 8, 8, 32))).astype(jnp.bfloat16)
    norm = layers.GroupNorm(8, 32, 1e-6, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    out = jax.jit(lambda x: norm(x))(x)
    assert out.dtype == jnp.bfloat16
    xf = np.asarray(x, np.float64).reshape(2, -1, 8, 4)
    ref = ((xf - xf.mean(axis=(1, 3), keepdims=True)) / np.sqrt(xf.var(axis=(1, 3), keepdims=True) + 1e-6))
    ref = ref.reshape(x.shape)
    err = float(np.max(np.abs(np.asarray(out, np.float64) - ref)))
    naive = float(np.max(np.abs(np.asarray(_naive_bf16_group_norm(x, 8, 1e-6), np.float64) - ref)))
    print(f"GroupNorm bf16 (offset 300): max abs err {err:.3e}; with bf16 statistics {naive:.3e}")
    assert err < 0.035 < naive  # 0.035: 2 bf16 ulps of |out| <= 4.5
    assert _reduction_dtypes(lambda x: norm(x), x) == {("reduce_sum", "float32")}


def test_layer_norm_statistics_in_float32_under_bfloat16():
    x = (300.0 + jax.random.normal(jax.random.key(1), (4, 16, 64))).astype(jnp.bfloat16)
    norm = layers.LayerNorm(64, 1e-5, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    out = jax.jit(lambda x: norm(x))(x)
    xf = np.asarray(x, np.float64)
    ref = (xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True) + 1e-5)
    err = float(np.max(np.abs(np.asarray(out, np.float64) - ref)))
    naive = x - x.mean(-1, keepdims=True)
    naive = naive * jax.lax.rsqrt(jnp.square(naive).mean(-1, keepdims=True) + 1e-5)
    naive_err = float(np.max(np.abs(np.asarray(naive, np.float64) - ref)))
    print(f"LayerNorm bf16 (offset 300): max abs err {err:.3e}; with bf16 statistics {naive_err:.3e}")
    assert out.dtype == jnp.bfloat16 and err < 0.035 < naive_err
    assert _reduction_dtypes(lambda x: norm(x), x) == {("reduce_sum", "float32")}


@pytest.mark.parametrize("implementation,causal", [("xla", False), ("xla", True), ("blocked", False)])
def test_attention_softmax_in_float32_under_bfloat16(implementation, causal):
    """The scores' max, exp and sum are float32 (every reduction in the traced attention is), and
    the output is the float32 attention of the same bf16 inputs up to bf16 rounding."""
    ks = jax.random.split(jax.random.key(2), 3)
    q, k, v = (jax.random.normal(kk, (3, 40, 32)).astype(jnp.bfloat16) for kk in ks)
    q = q * 4  # sharp softmax: its rounding shows
    fn = lambda q, k, v: layers.attention(q, k, v, 2, is_causal=causal, implementation=implementation)  # noqa: E731
    dtypes = _reduction_dtypes(fn, q, k, v)
    assert dtypes and all(d == "float32" for _, d in dtypes), dtypes
    out = jax.jit(fn)(q, k, v)
    ref = layers.attention(*(x.astype(jnp.float32) for x in (q, k, v)), 2, is_causal=causal, implementation="xla")
    err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)))
    print(f"attention {implementation} causal={causal} bf16: max abs err vs float32 {err:.3e}, reductions {dtypes}")
    assert out.dtype == jnp.bfloat16 and err < 0.05


def test_one_pass_group_norm_matches_two_pass_in_float32():
    """The opt-in one-pass GroupNorm (`group_norm="one_pass"`) against the default, float32,
    activations of a U-Net's magnitude; an unknown formulation is a SettingsError."""
    x = 2.0 + 3.0 * jax.random.normal(jax.random.key(6), (2, 4, 8, 8, 32))
    kw = dict(rngs=nnx.Rngs(0))
    two, one = (layers.GroupNorm(8, 32, 1e-5, group_norm=g, **kw) for g in ("two_pass", "one_pass"))
    one.scale.set_value(1 + 0.1 * jax.random.normal(jax.random.key(7), (32,)))
    two.scale.set_value(one.scale.get_value())
    err = float(jnp.max(jnp.abs(one(x) - two(x))))
    print(f"one-pass vs two-pass GroupNorm, float32: max abs err {err:.2e}")
    assert err < 1e-5
    with pytest.raises(ValueError, match="'fused' is not a GroupNorm formulation"):
        layers.GroupNorm(8, 32, 1e-5, group_norm="fused", **kw)


# --- the TPU path: Pallas flash attention, interpreted on CPU ---------------------------

@pytest.mark.parametrize("tq,tk,dtype,causal", [(256, 256, jnp.float32, False), (256, 128, jnp.bfloat16, False),
                                                (128, 128, jnp.float32, True)])
def test_pallas_flash_attention_matches_xla(tq, tk, dtype, causal):
    """The TPU kernel `attention="pallas"` runs (jax.experimental.pallas.ops.tpu.flash_attention),
    here in Pallas' TPU interpret mode, against XLA's attention on the same inputs."""
    ks = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(ks[0], (2, tq, 128)).astype(dtype)
    k, v = (jax.random.normal(kk, (2, tk, 128)).astype(dtype) for kk in ks[1:])
    fn = lambda q, k, v: layers.attention(q, k, v, 2, is_causal=causal, implementation="pallas_interpret")  # noqa: E731
    assert "pallas_call" in {e.primitive.name for e in _eqns(jax.make_jaxpr(fn)(q, k, v).jaxpr)}
    out = jax.jit(fn)(q, k, v)
    ref = layers.attention(q, k, v, 2, is_causal=causal, implementation="xla")
    err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
    print(f"pallas flash (interpreted) {tq}x{tk} {jnp.dtype(dtype).name} causal={causal}: max abs err vs xla {err:.2e}")
    assert out.dtype == dtype and err < (2e-2 if dtype == jnp.bfloat16 else 1e-5)


@pytest.mark.slow
def test_unet_with_pallas_attention_matches_xla():
    """A tiny U-Net at 16x16 latents (256-token spatial self-attention: the Pallas kernel; the
    16-frame temporal and 5-token cross-attention: XLA, as on a TPU) against the same weights
    with attention="xla"."""
    cfg = dict(block_out_channels=[16, 32], down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
               up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], layers_per_block=1, norm_num_groups=8,
               attention_head_dim=8, cross_attention_dim=16, in_channels=4, out_channels=4)
    ref_model = unet3d.UNet3DConditionModel(cfg, attention="xla", rngs=nnx.Rngs(0))
    model = nnx.eval_shape(lambda: unet3d.UNet3DConditionModel(cfg, attention="pallas_interpret"))
    nnx.update(model, nnx.state(ref_model, nnx.Param))
    x = jax.random.normal(jax.random.key(4), (1, 2, 16, 16, 4))
    ctx = jax.random.normal(jax.random.key(5), (1, 5, 16))
    outs = []
    for m in (model, ref_model):
        g, st = nnx.split(m)
        outs.append(jax.jit(lambda st, x, c, g=g: nnx.merge(g, st)(x, jnp.array([500]), c))(st, x, ctx))
    err = float(jnp.max(jnp.abs(outs[0] - outs[1])))
    print(f"tiny U-Net, pallas (interpreted) vs xla attention: max abs err {err:.2e}")
    assert err < 1e-4


# --- the per-platform tables -------------------------------------------------------------

def test_platform_tables_name_every_platform():
    for platform in ("cpu", "gpu", "tpu"):
        spec = platforms.platform_defaults(platform)
        assert spec["attention"] == platforms.attention_for(None, platform)
        assert jnp.dtype(spec["dtype"]) in (jnp.float32, jnp.bfloat16)
        assert platforms.default_batch_size(platform) >= 1
    assert platforms.default_batch_size("cpu") == 1
    assert platforms.default_batch_size("gpu", device_memory_gib=80) <= platforms.default_batch_size(
        "gpu", device_memory_gib=141)
    # From the plans compiled for ms-1.7b: a v5e chip (16 GiB) held 14.33 GiB at 16 per chip,
    # so 8 fit within 90%; an 8 GiB chip takes 4 (7.03 GiB), not 8 (9.46 GiB).
    assert platforms.default_batch_size("tpu", device_memory_gib=16) == 8
    assert platforms.default_batch_size("tpu", device_memory_gib=8) == 4
    assert platforms.default_batch_size("gpu", device_memory_gib=80) == 8
    assert platforms.default_batch_size("gpu", device_memory_gib=6) == 1
