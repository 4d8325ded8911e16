"""Shared layers: the one attention (shapes and dtypes cuDNN cannot take fall back to XLA), its CPU blocks, GELU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ti2v_jax.models import attention, layers


def _reference(q, k, v, heads):
    b, tq, c = q.shape
    d = c // heads
    q, k, v = (np.asarray(x, np.float64).reshape(b, -1, heads, d).transpose(0, 2, 1, 3) for x in (q, k, v))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    out = (p / p.sum(-1, keepdims=True)) @ v
    return out.transpose(0, 2, 1, 3).reshape(b, tq, c)


# The VAE's mid-block attention is one head of 512 channels: cuDNN takes head dims <= 256
# that are multiples of 8 (the first GPU benchmark stopped there with NotImplementedError).
@pytest.mark.parametrize("heads,width,dtype", [(1, 512, jnp.bfloat16), (2, 12, jnp.bfloat16), (4, 64, jnp.float32)])
def test_cudnn_falls_back_where_it_cannot_run(heads, width, dtype):
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (2, n, width), jnp.float32) for kk, n in zip(ks, (7, 5, 5)))
    assert attention.attention_kernel("cudnn", dtype=dtype, head_dim=width // heads, q_len=7, kv_len=5) == "xla"
    out = layers.attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), heads, implementation="cudnn")
    ref = _reference(q.astype(dtype).astype(jnp.float32), k.astype(dtype).astype(jnp.float32),
                     v.astype(dtype).astype(jnp.float32), heads)
    err = float(np.max(np.abs(np.asarray(out, np.float64) - ref)))
    print(f"heads {heads} x {width // heads}, {jnp.dtype(dtype).name}: max abs err {err:.2e}")
    assert out.shape == q.shape and out.dtype == dtype
    assert err < (2e-2 if dtype == jnp.bfloat16 else 1e-5)


# --- the CPU formulation's blocks -----------------------------------------------------

@pytest.mark.parametrize("items,per_item,budget,blocks", [
    (12, 10, 40, (3, 4)),      # 4 items per block divide 12
    (12, 10, 50, (3, 4)),      # 5 do not: the nearest divisor, 4
    (13, 10, 40, (4, 4)),      # 13 is prime: padded to 16, four blocks of 4
    (12, 10, 10_000, None),    # everything fits: one plain call
])
def test_map_in_blocks(items, per_item, budget, blocks):
    seen = []

    def fn(a, b):
        seen.append(a.shape[:1])
        return jnp.tanh(a) * b[:, :1] + jnp.sum(a, axis=1, keepdims=True)

    a = jax.random.normal(jax.random.key(1), (items, 3))
    b = jax.random.normal(jax.random.key(2), (items, 2))
    out = layers.map_in_blocks(fn, (a, b), per_item, budget)
    want = jnp.tanh(a) * b[:, :1] + jnp.sum(a, axis=1, keepdims=True)
    assert out.shape == want.shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert seen == [(items,)] if blocks is None else seen == [(blocks[1],)]
    if blocks is not None:  # the traced block count: the scan's length
        jaxpr = jax.make_jaxpr(lambda a, b: layers.map_in_blocks(fn, (a, b), per_item, budget))(a, b)
        assert any(e.primitive.name == "scan" and e.params["length"] == blocks[0] for e in jaxpr.eqns)


def test_cpu_attention_in_blocks_matches_reference(monkeypatch):
    """The blocked CPU attention, forced into several (padded) blocks, is the same attention."""
    monkeypatch.setattr(attention, "_CPU_BLOCK_BYTES", 3 * 7 * 5 * 4 * 2)  # two items of 3 heads x 7 x 5 scores
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (5, n, 12), jnp.float32) for kk, n in zip(ks, (7, 5, 5)))
    out = layers.attention(q, k, v, 3, implementation="blocked")
    jaxpr = jax.make_jaxpr(lambda q, k, v: layers.attention(q, k, v, 3, implementation="blocked"))(q, k, v)
    assert any(e.primitive.name == "scan" for e in jaxpr.eqns)  # it did run in blocks
    err = float(np.max(np.abs(np.asarray(out, np.float64) - _reference(q, k, v, 3))))
    print(f"blocked CPU attention (5 items, blocks of 2): max abs err {err:.2e}")
    assert err < 1e-5


def test_attention_choice_is_explicit():
    """None is the platform's kernel, resolved when a model is built for that platform (the
    blocked one on CPU); the blocked transformer layers follow the attention choice; a causal
    call or a shape a kernel cannot take falls back to XLA (recorded with the reason); a kernel
    for another platform, or an unknown name, is a one-line SettingsError."""
    from ti2v_jax import platforms
    from ti2v_jax.errors import SettingsError

    backend = jax.default_backend()
    assert attention.resolve_attention(None) == platforms.PLATFORMS.get(backend, {"attention": "xla"})["attention"]
    assert platforms.attention_for(None, "gpu") == "cudnn" and platforms.attention_for(None, "tpu") == "pallas"
    assert platforms.attention_for("pallas", "tpu") == "pallas"
    assert layers.blocked_layers("blocked") and not layers.blocked_layers("xla")
    assert layers.blocked_layers(None) == (backend == "cpu")
    kw = dict(dtype=jnp.bfloat16, head_dim=64, q_len=1024, kv_len=1024)
    with attention.record_kernels() as calls:
        assert attention.attention_kernel("blocked", **kw, is_causal=True) == "xla"
        assert attention.attention_kernel("pallas_interpret", **{**kw, "kv_len": 77}) == "xla"
        assert attention.attention_kernel("pallas", **kw) == "pallas"  # no backend check: built for a TPU
    assert [c["kernel"] for c in calls] == ["xla", "xla", "pallas"]
    assert "causal" in calls[0]["fallback"] and "multiples of 128" in calls[1]["fallback"] and not calls[2]["fallback"]
    for name, platform in (("cudnn", "cpu"), ("pallas", "cpu"), ("pallas", "gpu"), ("cudnn", "tpu")):
        with pytest.raises(SettingsError, match=f"attention='{name}' needs a"):
            platforms.attention_for(name, platform)
    with pytest.raises(SettingsError, match="'flash' is not an attention implementation"):
        layers.check_attention("flash")


def test_gelu_matches_torch():
    """layers.gelu (torch's erf formula) against torch.nn.functional.gelu, float32, over [-12, 12]."""
    torch = pytest.importorskip("torch")
    x = np.linspace(-12, 12, 200_001, dtype=np.float32)
    want = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    got = np.asarray(jax.jit(layers.gelu)(x))
    err = float(np.max(np.abs(got - want)))
    print(f"gelu vs torch: max abs err {err:.2e}")
    assert err < 3e-6
    assert np.array_equal(got[x > 6], x[x > 6]) and np.all(np.abs(got[x < -6]) < 1e-6)
