"""Fréchet Video Distance and its grouped variants (tFVD, sFVD), in float64.

    stats = FeatureStats(); stats.update(features_batch) ...   # streamed: any number of videos
    frechet_distance(real_stats, fake_stats)
    grouped_fvd(real_features, real_keys, fake_features, fake_keys)   # tFVD / sFVD

The statistics are those of StyleGAN-V's and cd-fvd's `FeatureStats`: the mean and the
biased (1/N) covariance of the features, accumulated in float64. They are merged batch by
batch with Chan et al.'s pairwise update (count, mean, centred sum of squares), which
gives the same numbers as the reference's raw sums in exact arithmetic and loses less to
cancellation in floating point. The distance is the reference's formula,

    |mu_r - mu_f|^2 + tr(S_r + S_f - 2 sqrtm(S_r S_f)),

with the matrix square root from `scipy.linalg.sqrtm` and the real part of the trace,
as `cdfvd.compute_fvd_from_stats` and StyleGAN-V's `compute_fvd` compute it.

tFVD / sFVD (TI2V-Zero): the videos are split into groups by a key (the prompt for
text-conditioned FVD, the start image or subject for subject-conditioned FVD), the FVD is
computed within each group between its real and its generated videos, and the groups'
FVDs are averaged (unweighted); the group sizes are reported with the result.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from ti2v_jax.errors import InputError


class FeatureStats:
    """Streamed float64 mean and covariance of feature vectors (rows)."""

    def __init__(self, num_features: int | None = None):
        self.n = 0
        self.mean = None if num_features is None else np.zeros(num_features, np.float64)
        self.m2 = None if num_features is None else np.zeros((num_features, num_features), np.float64)

    def update(self, features) -> "FeatureStats":
        """Add a batch (N, D) of features; returns self."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {x.shape}")
        if not len(x):
            return self
        if not np.all(np.isfinite(x)):
            raise InputError(f"{int((~np.isfinite(x)).any(axis=1).sum())} feature vectors hold NaN or inf")
        mean = x.mean(axis=0)
        c = x - mean
        return self._merge(len(x), mean, c.T @ c)

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Add another FeatureStats' videos; returns self."""
        return self if other.n == 0 else self._merge(other.n, other.mean, other.m2)

    def _merge(self, n, mean, m2):
        if self.mean is None:
            self.mean, self.m2 = np.zeros_like(mean), np.zeros_like(m2)
        if mean.shape != self.mean.shape:
            raise ValueError(f"features of size {mean.shape[0]} added to statistics of size {self.mean.shape[0]}")
        total = self.n + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + np.outer(delta, delta) * (self.n * n / total)
        self.mean = self.mean + delta * (n / total)
        self.n = total
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (D,), biased covariance (D, D)), as the reference's `get_mean_cov`."""
        if self.n == 0:
            raise ValueError("no features were added")
        return self.mean, self.m2 / self.n


def frechet_distance(real, fake) -> float:
    """The Fréchet distance between two Gaussians: FeatureStats, or (mean, cov) pairs."""
    import scipy.linalg

    mu_r, s_r = real.mean_cov() if isinstance(real, FeatureStats) else real
    mu_f, s_f = fake.mean_cov() if isinstance(fake, FeatureStats) else fake
    m = np.square(np.asarray(mu_r, np.float64) - np.asarray(mu_f, np.float64)).sum()
    s = scipy.linalg.sqrtm(np.dot(s_f, s_r))
    return float(np.real(m + np.trace(s_f + s_r - s * 2)))


def fvd(real_features, fake_features) -> float:
    """FVD between two sets of features (N, D), e.g. `i3d.fvd_features` of the videos."""
    return frechet_distance(FeatureStats().update(real_features), FeatureStats().update(fake_features))


def group_indices(keys: Sequence[Hashable]) -> dict:
    """{key: [row indices]} in first-seen order."""
    out: dict = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return out


def grouped_fvd(real_features, real_keys, fake_features, fake_keys, *, min_size: int = 2,
                by: str = "group") -> dict:
    """tFVD / sFVD: the FVD within each group, averaged over the groups.

    real_keys / fake_keys: each video's group (e.g. its prompt). Every group must have at
    least `min_size` real and `min_size` generated videos (a covariance needs two), and
    the two sides must name the same groups; otherwise one InputError names them all.
    Returns {"by", "mean", "groups": {key: {"fvd", "real", "fake"}}} (keys as strings).
    """
    real_features, fake_features = np.asarray(real_features), np.asarray(fake_features)
    if len(real_keys) != len(real_features) or len(fake_keys) != len(fake_features):
        raise ValueError("one group key per video is needed")
    rg, fg = group_indices(real_keys), group_indices(fake_keys)
    problems = []
    only = [k for k in fg if k not in rg]
    if only:
        problems.append(f"no real videos for {by} {_names(only)}")
    only = [k for k in rg if k not in fg]
    if only:
        problems.append(f"no generated videos for {by} {_names(only)}")
    small = [f"{k!r} ({len(rg.get(k, ()))} real, {len(fg.get(k, ()))} generated)"
             for k in fg if k in rg and min(len(rg[k]), len(fg[k])) < min_size]
    if small:
        problems.append(f"{len(small)} {by} group(s) have fewer than {min_size} videos on a side, too few for "
                        f"a covariance: " + ", ".join(small[:10]) + (" ..." if len(small) > 10 else ""))
    if problems:
        raise InputError(f"cannot compute FVD per {by}: " + "; ".join(problems))
    groups = {}
    for k, rows in fg.items():
        groups[str(k)] = {"fvd": fvd(real_features[rg[k]], fake_features[rows]),
                          "real": len(rg[k]), "fake": len(rows)}
    return {"by": by, "mean": float(np.mean([g["fvd"] for g in groups.values()])), "groups": groups}


def _names(keys, limit: int = 10) -> str:
    return ", ".join(repr(k) for k in keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
