"""The attention of every network: one function, `attention`, and the kernels it can run.

Kernels (the `attention=` argument of UNet3DConditionModel, AutoencoderKL, CLIPTextModel and
the blocks that attend; a static attribute of the modules, so it is part of the graph
definition and of every compiled program's key):
  "xla"      jax.nn.dot_product_attention's XLA formulation (softmax in float32), anywhere
  "cudnn"    cuDNN's fused flash kernel (NVIDIA GPUs, float16/bfloat16, head dims <= 256
             in multiples of 8); other dtypes or shapes use "xla"
  "blocked"  the cache-blocked XLA formulation written for XLA:CPU (`_attention_blocked`);
             the U-Net's transformers then also run their per-sequence layers in
             cache-sized blocks (`blocked_layers`). Causal attention uses "xla".
  "pallas"   the Pallas TPU flash-attention kernel (jax.experimental.pallas.ops.tpu) for
             sequences whose lengths are multiples of 128; shorter or other ones use "xla"
  "pallas_interpret"  the same kernel in Pallas' TPU interpret mode: runs on CPU, slowly;
             for checking the TPU path without a TPU (tests/test_kernels.py)
  None       chosen for the platform the model is built for (`platforms.PLATFORMS`): a model
             built directly takes JAX's default backend's; `loading.load` (and so
             `from_pretrained` and `ti2v-jax plan`) the platform of the devices it loads for.

`record_kernels()` lists, while a program is traced, which kernel each attention call
runs and why (what `ti2v-jax plan` reports).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

from ti2v_jax.errors import SettingsError

ATTENTION_CHOICES = (None, "xla", "cudnn", "blocked", "pallas", "pallas_interpret")

_record: contextvars.ContextVar = contextvars.ContextVar("ti2v_attention_record", default=None)


def check_attention(attention):
    """`attention` if it is one of `ATTENTION_CHOICES`, else a one-line SettingsError."""
    if attention not in ATTENTION_CHOICES:
        choices = ", ".join(repr(c) for c in ATTENTION_CHOICES)
        raise SettingsError(f"attention={attention!r} is not an attention implementation; choose one of {choices}")
    return attention


def resolve_attention(attention) -> str:
    """The kernel a model built now runs: `attention` if given, else the default backend's
    (`platforms.PLATFORMS`). Models store the result, so it never changes after they are built."""
    check_attention(attention)
    if attention is not None:
        return attention
    from ti2v_jax.platforms import platform_defaults

    return platform_defaults()["attention"]


def blocked_layers(attention) -> bool:
    """Whether models built with `attention` run the transformers' per-sequence layers in
    cache-sized blocks (`map_in_blocks`): with the "blocked" formulation (CPU's automatic one)."""
    return resolve_attention(attention) == "blocked"


@contextlib.contextmanager
def record_kernels():
    """Collect, while programs are traced inside the block, one dict per attention call:
    batch, q_len, kv_len, heads, head_dim, dtype, causal, the kernel asked for and the one it runs,
    and why it falls back (empty when it does not)."""
    calls: list = []
    token = _record.set(calls)
    try:
        yield calls
    finally:
        _record.reset(token)


def attention_kernel(attention, *, dtype, head_dim: int, q_len: int, kv_len: int, is_causal: bool = False,
                     heads: int = 1, batch: int = 1) -> str:
    """The kernel one attention call runs: `attention`, or "xla" where that kernel cannot take
    the call (dtype, head width, sequence lengths, causal mask)."""
    asked = resolve_attention(attention)
    half = jnp.dtype(dtype) in (jnp.float16, jnp.bfloat16)
    why = ""
    if asked == "cudnn" and not (half and head_dim <= 256 and head_dim % 8 == 0):
        why = "cuDNN's flash kernel takes float16/bfloat16 and head dims <= 256 in multiples of 8"
    elif asked == "blocked" and is_causal:
        why = "the blocked formulation has no causal mask"
    elif asked in ("pallas", "pallas_interpret") and (q_len % 128 or kv_len % 128):
        why = f"the Pallas TPU kernel tiles sequences in multiples of 128 (q {q_len}, kv {kv_len})"
    impl = "xla" if why else asked
    calls = _record.get()
    if calls is not None:
        calls.append(dict(batch=batch, q_len=q_len, kv_len=kv_len, heads=heads, head_dim=head_dim,
                          dtype=jnp.dtype(dtype).name,
                          causal=is_causal, asked=asked, kernel=impl, fallback=why))
    return impl


def attention(q, k, v, heads: int, *, is_causal: bool = False, implementation: str | None = None):
    """Multi-head scaled dot-product attention: the only one in the package.

    q: (B, Tq, heads*D); k, v: (B, Tk, heads*D). Returns (B, Tq, heads*D) in q's dtype.
    `implementation`: one of `ATTENTION_CHOICES` (see the module docstring); every kernel
    computes the scores' softmax (max, exp, sum) in float32, whatever the input dtype.
    """
    b, tq, c = q.shape
    tk = k.shape[1]
    d = c // heads
    q = q.reshape(b, tq, heads, d)
    k = k.reshape(b, tk, heads, d)
    v = v.reshape(b, tk, heads, d)
    impl = attention_kernel(implementation, dtype=q.dtype, head_dim=d, q_len=tq, kv_len=tk, is_causal=is_causal,
                            heads=heads, batch=b)
    if impl == "blocked":
        out = _attention_blocked(q, k, v)
    elif impl in ("pallas", "pallas_interpret"):
        out = _attention_pallas(q, k, v, is_causal=is_causal, interpret=impl == "pallas_interpret")
    else:
        out = jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation=impl)
    return out.reshape(b, tq, c)


# Pallas block sizes, from compiling the kernel by Mosaic at the 1.7B model's shapes for TPU
# v4, v5e, v5p and v6e (benchmarks/pallas_blocks.py, RESULTS.md): k and v are streamed once per
# block of queries, so the largest query block cuts HBM traffic most; VMEM is what bounds the
# blocks (q 1024 x k 512 of 512-wide float32 heads exceeds v4's and v5e's 16 MiB; 1024 x 256
# compiles on all four). Bytes of one block's rows (block x head_dim x itemsize), at most:
PALLAS_Q_BLOCK_BYTES = 2 * 2 ** 20
PALLAS_K_BLOCK_BYTES = 2 ** 19


def pallas_blocks(q_len: int, kv_len: int, head_dim: int, itemsize: int) -> tuple[int, int]:
    """(block_q, block_k) of the Pallas TPU kernel: the largest of 1024/512/256/128 dividing
    the query length and of 512/256/128 dividing the key length, within the bytes above."""
    row = head_dim * itemsize
    bq = next((b for b in (1024, 512, 256, 128) if q_len % b == 0 and b * row <= PALLAS_Q_BLOCK_BYTES), 128)
    bk = next((b for b in (512, 256, 128) if kv_len % b == 0 and b * row <= PALLAS_K_BLOCK_BYTES), 128)
    return bq, bk


def _attention_pallas(q, k, v, *, is_causal: bool, interpret: bool):
    """The Pallas TPU flash-attention kernel on (B, T, heads, D), T multiples of 128.

    Tiles of `pallas_blocks` queries and keys; the running max and sum are float32 in the
    kernel. `interpret`: Pallas' TPU interpret mode, which runs the kernel on CPU (for tests).
    """
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    tq, tk, d = q.shape[1], k.shape[1], q.shape[-1]
    bq, bk = pallas_blocks(tq, tk, d, q.dtype.itemsize)
    sizes = fa.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1)
    qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))

    def run():
        return fa.flash_attention(qh, kh, vh, causal=is_causal, sm_scale=d ** -0.5, block_sizes=sizes)

    if interpret:
        with pltpu.force_tpu_interpret_mode():
            out = run()
    else:
        out = run()
    return out.transpose(0, 2, 1, 3)


# Working set per block of the blocked formulation (`map_in_blocks`): sized to stay in cache.
_CPU_BLOCK_BYTES = 4 << 20


def map_in_blocks(fn, args: tuple, per_item_bytes: int, budget: int | None = None):
    """fn(*args) computed over blocks of the leading (item) axis that all `args` share.

    `fn` must treat items independently. The blocks hold as many items as fit `budget`
    given `per_item_bytes` (the largest intermediate per item), and run one after the
    other (`lax.map`), so each block's intermediates stay in cache; XLA:CPU is 1.5-3x
    faster that way than over one big batch (benchmarks/RESULTS.md). `budget` defaults to
    `_CPU_BLOCK_BYTES`. When no block size near that divides the items, the items are
    zero-padded to a multiple of it and the padding is dropped from the output. One block:
    plain fn(*args).
    """
    b = args[0].shape[0]
    budget = _CPU_BLOCK_BYTES if budget is None else budget
    target = max(1, min(b, budget // max(1, per_item_bytes)))
    if target == b:
        return fn(*args)
    nb = target
    while b % nb:
        nb -= 1
    pad = 0
    if 2 * nb < target:  # no divisor near the target: pad instead of many tiny blocks
        nb, pad = target, -b % target
    blocks = lambda x: jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(  # noqa: E731
        ((b + pad) // nb, nb) + x.shape[1:])
    out = jax.lax.map(lambda a: fn(*a), tuple(blocks(x) for x in args))
    return out.reshape((b + pad,) + out.shape[2:])[:b]


def _attention_blocked(q, k, v):
    """softmax(q k^T / sqrt(d)) v on (B, T, heads, D), laid out for XLA:CPU.

    The batch is processed in blocks (`map_in_blocks`) whose float32 scores fit in about
    4 MiB, so the Tq x Tk scores stay in cache between Q @ K^T, exp and P @ V, which is
    much faster on XLA:CPU than one big batched product at 1024 tokens (benchmarks/RESULTS.md).
    Small sequences (temporal attention, 16 frames) make large blocks, so the loop stays short.
    """
    _, tq, h, _ = q.shape
    return map_in_blocks(_attention_blocked_block, (q, k, v), h * tq * k.shape[1] * 4)


def _attention_blocked_block(q, k, v):
    """One block of `_attention_blocked`.

    XLA:CPU's Q @ K^T is faster with K as (B, heads, D, Tk) than contracting the last
    axes of both, and dividing by the softmax sum after P @ V touches Tq*D values, not
    Tq*Tk. Scores, exp and sums in float32.
    """
    d = q.shape[-1]
    qh = (q * jnp.asarray(d ** -0.5, q.dtype)).transpose(0, 2, 1, 3)
    kt = k.transpose(0, 2, 3, 1)
    s = jnp.matmul(qh, kt, preferred_element_type=jnp.float32)
    e = jnp.exp(s - s.max(axis=-1, keepdims=True))
    o = jnp.matmul(e.astype(v.dtype), v.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
    o = o / e.sum(axis=-1, keepdims=True)
    return o.astype(q.dtype).transpose(0, 2, 1, 3)
