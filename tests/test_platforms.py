"""ti2v_jax.platforms: the per-platform table (kernels, compiler options), the chips, and
programs compiled for a target that is not the host."""

import jax
import jax.numpy as jnp
import numpy as np

from ti2v_jax import parallel, platforms


def test_cpu_options_given_and_accepted():
    opts = platforms.compiler_options("cpu")
    assert opts == {"xla_cpu_experimental_ynn_fusion_type":
                    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}, opts
    assert platforms.compiler_options("tpu") == {}
    # GPU options are checked on a GPU; a host without one compiles ahead for a GPU target with
    # the table's options as they are.
    assert platforms.PLATFORMS["gpu"]["options"] == {"xla_gpu_enable_triton_gemm": False}
    if not any(d.platform == "gpu" for d in jax.devices()):
        assert platforms.compiler_options("gpu") == {"xla_gpu_enable_triton_gemm": False}
    # A program compiled with them gives the convolution XLA gives without them, to rounding.
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 8))
    conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    a, b = platforms.jit(conv, platform="cpu")(x, w), jax.jit(conv)(x, w)
    err = float(jnp.abs(a - b).max())
    print("max |with options - without|:", err)
    assert err < 1e-4


def test_user_xla_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert platforms.compiler_options("cpu") == {}


def test_refused_options_are_dropped(monkeypatch):
    monkeypatch.setitem(platforms.PLATFORMS, "cpu", {**platforms.PLATFORMS["cpu"], "options": {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_TYPE"}})
    try:
        assert platforms.compiler_options("cpu") == {}
        # ... and programs still compile and run.
        assert float(platforms.jit(lambda v: v * 2, platform="cpu")(jnp.float32(3))) == 6.0
    finally:
        monkeypatch.undo()
    assert platforms.compiler_options("cpu")


def test_run_batched_pmap_compiles_with_them_once():
    # One CPU device here: the pmap path compiles ahead of time with the options, once per signature.
    parallel.clear_cache()
    f = lambda x: jnp.tanh(x) * 3  # noqa: E731
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    ref = parallel.run_batched(f, (x,), mode="none")
    got = parallel.run_batched(f, (x,), mode="pmap")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    b = parallel.batched(f, mode="pmap")
    assert b.pmap_options == platforms.compiler_options("cpu") and len(b.aot) == 1
    parallel.run_batched(f, (x + 1,), mode="pmap")
    assert len(b.aot) == 1
    parallel.run_batched(f, (x[:2],), mode="pmap")
    assert len(b.aot) == 2
