"""A grid of per-step settings (and seeds) for one start image, sampled in one program.

    pts, rows = grid(steps=10, guidance=[3.0, 6.0, 9.0], resample=[4, (4,) * 5 + (0,) * 5])
    lat, px = sample_grid(key, guided, encode, decode, image_frames, rows=rows, num_frames=K,
                          num_new_frames=N, timesteps=ts, max_resample=4)

Each grid point is one item of a batch: the start image is repeated, and the per-step
settings enter as (P, S) rows (`ti2v_zero_sample` takes them per item), so the whole grid is
one compiled program and changing the grid's values does not recompile (its size does).
Every point uses the same noise (`key` is every point's key) unless `keys` gives one per
point. A point's video equals the one its key gives when run alone, up to the batch size's
effect on XLA's kernels (float32 rounding; bit-equal on this CPU for the default model, see tests).
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

from ti2v_jax.errors import SettingsError
from ti2v_jax.settings import SamplerSettings

from .schedule import item_keys
from .ti2v_zero import ti2v_zero_sample

# The per-step settings, their defaults and their validation are `SamplerSettings`' own.
PER_STEP = ("guidance", "eta", "resample")
_DEFAULT = SamplerSettings()


def grid(steps: int, **axes):
    """The product of per-step settings' values: (points, rows).

    axes: guidance / eta / resample, each a list of values, a value being a number or a
    tuple of one number per step. points: a list of {name: value} dicts, in product order
    (the last axis fastest); rows: {name: (P, S) array} for every per-step setting (its
    `SamplerSettings` default where not given), ready for `sample_grid` or a program's per-item
    arguments. Values are checked as `SamplerSettings` checks them (SettingsError).
    """
    unknown = set(axes) - set(PER_STEP)
    if unknown:
        raise SettingsError(f"grid axes must be among {list(PER_STEP)}, got {sorted(unknown)}")
    names = list(axes)
    points = [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]
    settings = [SamplerSettings(steps=steps, **p) for p in points]
    rows = {name: np.stack([s.per_step(name) for s in settings]) for name in PER_STEP}
    return points, rows


def sample_grid(key, guided, encode, decode, frames, *, rows, keys=None, max_resample=None, **sample_kw):
    """One start (frames (1, M, H, W, 3), or latents= (1, M, h, w, C)) sampled at every point of
    `rows` ({name: (P, S)}, from `grid`) in ONE batched `ti2v_zero_sample` call.

    guided: the guided denoiser; its contexts may have batch 1 (broadcast to the P points).
    key: one key, every point's (same noise everywhere: each point is the video `key` gives
    alone); keys: instead, (P,) per-point keys (a seed axis). sample_kw: `ti2v_zero_sample`'s
    other keyword arguments. Returns its outputs, one item per point.
    """
    # rows stay as given: `grid`'s NumPy rows are concrete even under jax.jit, so
    # ti2v_zero_sample reads max_resample from them; traced rows need max_resample=.
    p = len(next(iter(rows.values())))
    if keys is None:
        one = item_keys(key, 1)  # the key of one video, (1,)
        keys = jnp.broadcast_to(one, (p,) + one.shape[1:])
    tile = lambda a: None if a is None else jnp.broadcast_to(a, (p,) + a.shape[1:])  # noqa: E731
    latents = sample_kw.pop("latents", None)
    return ti2v_zero_sample(keys, guided, encode, decode, tile(frames), latents=tile(latents),
                            guidance=rows.get("guidance", _DEFAULT.guidance),
                            eta=rows.get("eta", _DEFAULT.eta),
                            resample=rows.get("resample", _DEFAULT.resample),
                            max_resample=max_resample, **sample_kw)


__all__ = ["grid", "sample_grid"]
