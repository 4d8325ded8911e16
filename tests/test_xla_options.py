"""ti2v_jax.xla_options: the per-program compiler options (CPU: YNNPACK for products and
reductions, not convolutions)."""

import jax
import jax.numpy as jnp
import numpy as np

from ti2v_jax import parallel, xla_options


def test_cpu_options_given_and_accepted():
    opts = xla_options.compiler_options("cpu")
    assert opts == {"xla_cpu_experimental_ynn_fusion_type":
                    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}, opts
    assert xla_options.compiler_options("tpu") == {}
    # GPU options are checked on a GPU: a machine without one gives none.
    assert xla_options._OPTIONS["gpu"] == {"xla_gpu_enable_triton_gemm": False}
    if not any(d.platform == "gpu" for d in jax.devices()):
        assert xla_options.compiler_options("gpu") == {}
    # A program compiled with them gives the convolution XLA gives without them, to rounding.
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 8))
    conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    a, b = xla_options.jit(conv, platform="cpu")(x, w), jax.jit(conv)(x, w)
    err = float(jnp.abs(a - b).max())
    print("max |with options - without|:", err)
    assert err < 1e-4


def test_user_xla_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert xla_options.compiler_options("cpu") == {}


def test_refused_options_are_dropped(monkeypatch):
    monkeypatch.setitem(xla_options._OPTIONS, "cpu", {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_TYPE"})
    try:
        assert xla_options.compiler_options("cpu") == {}
        # ... and programs still compile and run.
        assert float(xla_options.jit(lambda v: v * 2, platform="cpu")(jnp.float32(3))) == 6.0
    finally:
        monkeypatch.undo()
    assert xla_options.compiler_options("cpu")


def test_run_batched_pmap_compiles_with_them_once():
    # One CPU device here: the pmap path compiles ahead of time with the options, once per signature.
    parallel.clear_cache()
    f = lambda x: jnp.tanh(x) * 3  # noqa: E731
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    ref = parallel.run_batched(f, (x,), mode="none")
    got = parallel.run_batched(f, (x,), mode="pmap")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    b = parallel.batched(f, mode="pmap")
    assert b.pmap_options == xla_options.compiler_options("cpu") and len(b.aot) == 1
    parallel.run_batched(f, (x + 1,), mode="pmap")
    assert len(b.aot) == 1
    parallel.run_batched(f, (x[:2],), mode="pmap")
    assert len(b.aot) == 2
