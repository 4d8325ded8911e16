"""Noise schedule and the DDIM building blocks, as pure functions of arrays.

Everything here follows ALGORITHM.md ("The frozen model", "DDIM step"). `abar` is
the `alphas_cumprod` table indexed by the integer training timestep; `t` may be a
Python int, a traced scalar, or a (B,) array (one timestep per batch item).

Arithmetic is done in the promoted dtype of the operands and the result is cast back
to the dtype of `x`, so a scan carry keeps its dtype. The samplers keep their state in
float32 (`state_dtype`: float64 stays float64), whatever dtype the networks compute in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .guidance import guided_eps, shares_samples  # noqa: F401  (re-exported)

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def scheduler_values(config: dict | None, where: str = "scheduler config") -> tuple[int, float, float]:
    """(num_train_timesteps, beta_start, beta_end) of a diffusers DDIM scheduler config (None:
    the defaults), checked: a field of the wrong kind or out of range (betas must satisfy
    0 < beta_start <= beta_end < 1; only the "scaled_linear" schedule and "epsilon"
    prediction are implemented) is a one-line CheckpointError naming `where` and the field."""
    from ti2v_jax.errors import CheckpointError

    config = config or {}

    def bad(field, value, need):
        return CheckpointError(f"{where}: {field}={value!r} is not {need}; fix the file or convert the "
                               f"checkpoint again")

    n = config.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad("num_train_timesteps", n, "an integer >= 1")
    betas = []
    for field, default in (("beta_start", BETA_START), ("beta_end", BETA_END)):
        v = config.get(field, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise bad(field, v, "a number between 0 and 1")
        betas.append(float(v))
    if betas[0] > betas[1]:
        raise bad("beta_start", betas[0], f"<= beta_end ({betas[1]})")
    for field, supported in (("beta_schedule", "scaled_linear"), ("prediction_type", "epsilon")):
        if config.get(field, supported) != supported:
            raise bad(field, config[field], f"{supported!r} (the only one implemented)")
    return n, betas[0], betas[1]


def state_dtype(dtype):
    """The dtype of the sampler state for inputs of `dtype`: at least float32 (precision policy:
    everything between network calls is float32; a float64 run stays float64)."""
    return jnp.promote_types(jnp.dtype(dtype), jnp.float32)


def betas(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
          beta_end: float = BETA_END, dtype=jnp.float32):
    """`scaled_linear` betas: linspace(sqrt(start), sqrt(end), n)**2, in float64, then cast."""
    b = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2
    return jnp.asarray(b.astype(np.dtype(dtype)))


def alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                   beta_end: float = BETA_END, dtype=jnp.float32):
    """abar[t] = prod_{s<=t} (1 - beta_s), computed in float64, then cast."""
    b = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2
    return jnp.asarray(np.cumprod(1.0 - b).astype(np.dtype(dtype)))


def ddim_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                   steps_offset: int = 1) -> np.ndarray:
    """DDIM timesteps, "leading" spacing: t_i = (S-1-i) * (n // S) + offset, as int32.

    Equal to diffusers' DDIMScheduler(timestep_spacing="leading", steps_offset=1)
    for every S. (The published TI2V-Zero code differs when S does not divide
    1000: it clamps an extra step to 999. We do not reproduce that; see ALGORITHM.md.)
    Returned as a NumPy array: pass it to the samplers as an array argument, so the
    number of steps is a shape, not a trace-time constant.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    stride = num_train_timesteps // num_steps
    return (np.arange(num_steps - 1, -1, -1) * stride + steps_offset).astype(np.int32)


def next_timesteps(timesteps):
    """The timestep each step moves to: t_{i+1}, and 0 after the last (abar[0], not 1)."""
    timesteps = jnp.asarray(timesteps, jnp.int32)
    return jnp.concatenate([timesteps[1:], jnp.zeros((1,), jnp.int32)])


def _coef(abar, t, x):
    """abar[t], broadcastable against x (t scalar, or (B,) for per-item timesteps)."""
    a = jnp.asarray(abar)[jnp.asarray(t)]
    if a.ndim == 1:
        a = a.reshape(a.shape + (1,) * (x.ndim - 1))
    return a


def q_sample(x0, t, z, abar):
    """Forward noising: sqrt(abar[t]) * x0 + sqrt(1 - abar[t]) * z."""
    a = _coef(abar, t, x0)
    return (jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * z).astype(x0.dtype)


def ddim_step(x, eps, t, t_prev, abar, eta=0.0, z=None):
    """One DDIM step from t to t_prev (Song et al. 2021), epsilon prediction, no clipping.

    `eta` may be a Python number or an array; `z` (same shape as x) is the fresh
    noise for eta > 0 and may be None when eta is statically 0.
    """
    a_t = _coef(abar, t, x)
    a_prev = _coef(abar, t_prev, x)
    x0 = (x - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
    if isinstance(eta, (int, float)) and eta == 0:
        return (jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps).astype(x.dtype)
    if z is None:
        raise ValueError("ddim_step with eta != 0 needs noise z")
    var = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
    sigma = eta * jnp.sqrt(var)
    out = jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev - sigma ** 2) * eps + sigma * z
    return out.astype(x.dtype)


def push_back(x, t, t_next, abar, z):
    """Resampling: re-noise x from level t_next up to level t with fresh noise z.

    x <- sqrt(abar[t]/abar[t_next]) * x + sqrt(1 - abar[t]/abar[t_next]) * z.
    """
    ratio = _coef(abar, t, x) / _coef(abar, t_next, x)
    return (jnp.sqrt(ratio) * x + jnp.sqrt(1.0 - ratio) * z).astype(x.dtype)


# --- randomness -------------------------------------------------------------
# One rule for every entry point: each video has its own key and draws all its noise
# from it alone, so a video does not depend on the batch size, on its neighbours, or
# on how the batch is split across devices or processes. A sampler takes a batch's
# keys, shape (B,), like any other per-item array; one key is the key of one video.
# `seed=s` elsewhere (pipeline, CLI, manifests) means the key `jax.random.key(s)`.
# The per-item noise schemes are written in the samplers' module docstrings.

def _is_single_key(key) -> bool:
    key = jnp.asarray(key) if not hasattr(key, "dtype") else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 0
    return key.ndim == 1  # raw uint32 key data, e.g. jax.random.PRNGKey(0)


def item_keys(key, batch_size: int):
    """The videos' keys, shape (B,): `key` itself if it holds one key per video, shape (B,).

    A single key is the key of ONE video: it is accepted for a batch of 1 (as `key[None]`,
    so `sample(k)` is `sample(k[None])` and item b of a batch run with keys `ks` is the
    video `sample(ks[b])` gives alone); for a larger batch it raises ValueError: pass B
    keys, e.g. `jax.random.split(key, B)` (item b then gets `split(key, B)[b]`, which with
    JAX's default partitionable threefry does not depend on B and equals `fold_in(key, b)`),
    or `ti2v_jax.parallel.per_item_keys(seeds)`. Shard the keys along with the batch.
    Shapes only: works under jax.jit, jax.grad and jax.vmap.
    """
    if _is_single_key(key):
        if batch_size != 1:
            raise ValueError(f"one key is the key of one video; got one key for a batch of {batch_size}: "
                             f"pass one key per video, e.g. jax.random.split(key, {batch_size})")
        return key[None]
    if key.shape[0] != batch_size:
        raise ValueError(f"got {key.shape[0]} per-item keys for a batch of {batch_size}")
    return key


def fold(keys, n):
    """`fold_in(k, n)` for each per-item key k; n may be traced."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, n)


def normal(keys, shape, dtype=jnp.float32):
    """Standard normal noise of shape (B,) + shape, item b from keys[b].

    Always drawn in float32 and then cast, so the same key gives the same noise
    (up to rounding) whatever the computation dtype. Drawn flat and reshaped: the
    same values as `jax.random.normal(k, shape)`, but XLA:CPU compiles the 1-D
    counter of partitionable threefry about 5x faster than the N-D one.
    """
    shape = tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    z = jax.vmap(lambda k: jax.random.normal(k, (n,), jnp.float32).reshape(shape))(keys)
    return z.astype(dtype)


def step_key(frame_keys, j):
    """Key of DDIM step j (index into the timesteps): fold_in(fold_in(k, 1), j)."""
    return fold(fold(frame_keys, 1), j)


def step_draws(step_keys, num_draws: int, shape, dtype=jnp.float32):
    """All noise of one step, shape (B, num_draws) + shape: draw d = normal(fold_in(k_step, d)).

    One vectorised fold and one vectorised draw (few threefry call sites keep
    compile times short); draw d does not depend on num_draws.
    """
    sub = jax.vmap(lambda k: jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k, jnp.arange(num_draws)))
    return jax.vmap(lambda k: normal(k, shape, dtype))(sub(step_keys))
